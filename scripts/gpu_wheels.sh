#!/usr/bin/env bash
# The Python wheels for a GPU machine that reaches no package registry (docs/gpu-loan.md):
#   here:   bash scripts/gpu_wheels.sh download X.Y [ARCH]   -> .whl/ for its python3 X.Y (ARCH: x86_64)
#   there:  bash scripts/gpu_wheels.sh install               -> .venv/ here, over the machine's own packages
# pyproject's dependencies but torch (the machine's CUDA build is PyTorch's baseline there; a
# torch wheel put in .whl/ is installed too), with xgboost-cpu for xgboost (MetaSchedule's cost
# model, 6 MB instead of 58 with CUDA), plus pytest and matplotlib for gpu_checks.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
packages="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu onnx onnxruntime numpy psutil
          cloudpickle tornado pillow pytest matplotlib"
case ${1:-} in
    download)
        arch=${3:-x86_64}
        rm -rf .whl && mkdir .whl
        # setuptools: the editable install of this repo builds with it there
        python3 -m pip download -q --only-binary=:all: --python-version "${2:?python version of the GPU machine, e.g. 3.12}" \
            --implementation cp --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" \
            --platform "manylinux_2_24_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
            -d .whl $packages setuptools
        du -sh .whl ;;
    install)
        # --system-site-packages: the machine's torch (CUDA) and whatever else it has stay in use
        [ -x .venv/bin/pip ] || python3 -m venv --system-site-packages .venv
        if ls .whl/torch-*.whl >/dev/null 2>&1; then packages="$packages torch"; fi
        .venv/bin/python3 -m pip install -q --no-index --find-links .whl $packages
        .venv/bin/python3 -m pip install -q --no-index --find-links .whl --no-deps -e .
        .venv/bin/python3 -c "import tvm, torch, parcnet_tvm.schedules; print('TVM', tvm.__version__, '| torch', \
torch.__version__, '| CUDA', torch.cuda.is_available())" ;;
    *) echo "usage: bash scripts/gpu_wheels.sh download X.Y [ARCH] | install"; exit 2 ;;
esac
