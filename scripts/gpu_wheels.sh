#!/usr/bin/env bash
# The Python wheels a lent GPU machine lacks (it reaches no package registry; its python3 is
# 3.12 with torch, onnx and onnxruntime), carried there in the working tree. A call carries at
# most 64 MiB with the repo (~15 MB) and the apache-tvm wheel alone is ~100 MB, so the wheels
# travel in parts, one call each, onto the same warm machine (its /tmp survives between calls):
#   here:   bash scripts/gpu_wheels.sh download       -> .whl/part1 .. .whl/partN (45 MB at most each)
#   there:  calls 1 .. N-1, carry [".whl/partK"]:     bash scripts/gpu_wheels.sh stash K
#           call N, carry [".whl/partN"]:              bash scripts/gpu_wheels.sh install
#           then every command:                        export PYTHONPATH=/tmp/site:$PWD
# See docs/gpu-loan.md.
set -euo pipefail
cd "$(dirname "$0")/.."
stash=/tmp/gpu-wheels
case ${1:-} in
    download)
        rm -rf .whl && mkdir -p .whl/download
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl/download \
            apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu==3.4.1
        tvm=$(ls .whl/download/apache_tvm-*.whl)
        split -b 45M "$tvm" ".whl/download/$(basename "$tvm").part-"
        rm "$tvm"
        parts=0
        for piece in .whl/download/*.part-*; do
            parts=$((parts + 1)) && mkdir -p ".whl/part$parts" && mv "$piece" ".whl/part$parts/"
        done
        mv .whl/download/*.whl ".whl/part$parts/"  # the small wheels ride with the last piece
        rm -rf .whl/download
        grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
        du -sh .whl/part* ;;
    stash)
        mkdir -p "$stash" && cp ".whl/part${2:?which part}"/* "$stash/" && ls -la "$stash" ;;
    install)
        mkdir -p "$stash" && cp "$(ls -d .whl/part* | sort -V | tail -1)"/* "$stash/"
        for first in "$stash"/*.whl.part-aa; do cat "${first%-aa}"-* > "${first%.part-aa}"; done
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$stash"/*.whl
        PYTHONPATH=/tmp/site:$PWD python3 -c "import tvm, torch; print('TVM', tvm.__version__, '| torch', torch.__version__)" ;;
    *) echo "usage: bash scripts/gpu_wheels.sh download | stash K | install"; exit 2 ;;
esac
