#!/usr/bin/env bash
# Install everything parcnet-tvm and its tests need on a fresh Debian 12 machine (run as root,
# or with sudo available): the host and ARM cross toolchains, qemu for the emulated board,
# the Python package, then the cross-built ARM runtime (cached: seconds after the first time).
# The package goes into python3 from PATH, or, where pip may not install there (Debian 12's
# own Python, PEP 668), into a virtual environment .venv/ here: scripts/python runs either.
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

if python3 scripts/externally_managed.py; then
    echo "== $(python3 -V) is the system's (externally managed): installing into .venv/"
    $SUDO apt-get install -y -q --no-install-recommends python3-venv
    [ -x .venv/bin/pip ] || python3 -m venv --clear .venv  # --clear: a venv made without pip
fi

echo "== python packages (apache-tvm 0.27 + ffi 0.1.14, torch 2.13 CPU, ...)"
scripts/python -m pip install -q -e ".[test,arm,bench]"
scripts/python -c "import tvm, torch, parcnet_tvm; print('tvm', tvm.__version__, '| torch', torch.__version__)"

echo "== ARM Cortex-A17 runtime, runner and RPC server (cross-built from the installed wheels)"
scripts/python scripts/build_arm_runtime.py
if [ -x .venv/bin/python3 ]; then
    echo "== installed into .venv/: run the commands with scripts/python (or source .venv/bin/activate, then python3)"
fi
