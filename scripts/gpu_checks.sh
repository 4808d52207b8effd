#!/usr/bin/env bash
# Every CUDA check that needs a GPU, in one go (docs/gpu-loan.md: bringing TVM and this repo to a
# GPU machine without network access first):
#   trace   XT at 64 (our build), kernel call by kernel call against the same graph built for the CPU
#   tests   the GPU tests only (pytest -m gpu: our kernels for every knob value, the depth-wise
#           kernels, a verified library, bench's CUDA worker)
#   op      our oversized op against PyTorch's cuDNN depth-wise conv (scripts/bench_op.py)
#   tune    MetaSchedule on T at batch 32 for TUNE_T_MIN minutes (default 3), then on XT at
#           batch 1 for TUNE_XT_MIN (default 1.5), each built and verified; the logs go to this
#           GPU's work dirs in the cache (<cache>/tuning/t-cuda-224-b32/cuda-<arch>/ ...; a shipped
#           tuning_logs/ log of the same arch is their warm start) and are copied to OUT_DIR/<log>/
#   bench   scripts/bench.py --target cuda for T and XT at batch 32, then batch 1, with the
#           backends in BENCH_BACKENDS (default: all); the rows of both go to OUT/bench-cuda.json
#   kernels TVM's default CUDA build kernel by kernel against its CPU build (diagnosis only,
#           not in the default steps: it compiles every kernel twice)
# Usage: bash scripts/gpu_checks.sh OUT_DIR [STEP ...]   (default: trace tests op tune bench)
# Each step writes its log (and JSON/PNG, the tuning databases) to OUT_DIR; a failing step does
# not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu}
shift || true
steps=${*:-trace tests op tune bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, tvm; print('torch', torch.__version__, '| TVM', tvm.__version__)" | tee -a "$out/gpu.txt"

run_step() {  # name, command...: timed, logged, never fatal
    local name=$1
    shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

for step in $steps; do
    case $step in
        # -p no:logging: pytest's capture handlers have no names, and MetaSchedule's logger setup
        # (a second tuning run in one process) fails on a handler without a name.
        trace) run_step trace python3 scripts/trace_kernels.py --target cuda --model xt --size 64 --batch 2 ;;
        tests) run_step tests python3 -m pytest -q -rs -p no:logging -m gpu tests/test_schedules_cuda.py \
                   -k "not every_kernel_of_the_default_cuda_build" ;;
        kernels) run_step kernels python3 -m pytest -q -rs -p no:logging tests/test_schedules_cuda.py \
                     -k "every_kernel_of_the_default_cuda_build" ;;
        op) run_step bench_op python3 scripts/bench_op.py --target cuda --model xt t --batch 32 --json "$out/bench_op_cuda.json" ;;
        tune) run_step tune_t_b32 python3 scripts/tune.py --target cuda --model t --batch 32 \
                  --time-budget "${TUNE_T_MIN:-3}" --compare 0
              run_step tune_xt_b1 python3 scripts/tune.py --target cuda --model xt --batch 1 \
                  --time-budget "${TUNE_XT_MIN:-1.5}" --compare 0
              cache=$(python3 -c "from parcnet_tvm.tuning_log import cache_dir; print(cache_dir())")
              for log in t-cuda-224-b32 xt-cuda-224; do
                  for dir in "$cache/tuning/$log"/*/; do  # one per GPU arch (device.json names it)
                      [ -d "$dir" ] && mkdir -p "$out/$log" && cp "$dir"*.json "$out/$log/"
                  done
              done ;;
        bench|bench32) run_step bench_b32 python3 scripts/bench.py --target cuda --model t xt --batch 32 --repeat 20 \
                           --max-seconds 3 ${BENCH_BACKENDS:+--backends $BENCH_BACKENDS} --json "$out/bench_cuda_b32.json" --plot "$out/bench_cuda_b32.png" ;;&
        bench|bench1) run_step bench_b1 python3 scripts/bench.py --target cuda --model t xt --batch 1 --repeat 30 \
                          --max-seconds 3 ${BENCH_BACKENDS:+--backends $BENCH_BACKENDS} --json "$out/bench_cuda_b1.json" --plot "$out/bench_cuda_b1.png" ;;
        bench32) ;;
        *) echo "unknown step $step (trace, tests, op, tune, bench, bench32, bench1, kernels)" ;;
    esac
done

# One file of every CUDA row measured (docs/bench-cuda.json is this file, committed).
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [row for name in ("bench_cuda_b32.json", "bench_cuda_b1.json") if (out / name).exists()
        for row in json.loads((out / name).read_text())]
if rows:
    (out / "bench-cuda.json").write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} rows in {out / 'bench-cuda.json'}")
PY
