#!/usr/bin/env bash
# Install everything parcnet-tvm and its tests need on a fresh Debian 12 machine (run as root,
# or with sudo available): the host and ARM cross toolchains, qemu for the emulated board,
# the Python package, then the cross-built ARM runtime (cached: seconds after the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "== apt packages: host and arm-linux-gnueabihf toolchains, ninja, qemu-user, stb_image"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    g++ gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf binutils file \
    ninja-build qemu-user libstb-dev

echo "== python packages (apache-tvm 0.27 + ffi 0.1.14, torch 2.13 CPU, ...)"
python3 -m pip install -q -e ".[test,arm,bench]"
python3 -c "import tvm, torch, parcnet_tvm; print('tvm', tvm.__version__, '| torch', torch.__version__)"

echo "== ARM Cortex-A17 runtime, runner and RPC server (cross-built from the installed wheels)"
python3 scripts/build_arm_runtime.py
