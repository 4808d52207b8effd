#!/usr/bin/env bash
# Install everything parcnet-tvm and its tests need on a fresh Debian 12 machine (run as root,
# or with sudo available): the host and ARM cross toolchains, then the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "== apt packages: host and arm-linux-gnueabihf toolchains"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    g++ gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf binutils file

echo "== python packages (apache-tvm 0.27 + ffi 0.1.14, torch 2.13 CPU, ...)"
python3 -m pip install -q -e ".[test]"
python3 -c "import tvm, torch, parcnet_tvm; print('tvm', tvm.__version__, '| torch', torch.__version__)"
