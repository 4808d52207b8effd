#!/usr/bin/env python3
"""Tune ParCNetV2 with MetaSchedule (XGBoost cost model) and build a tuned, verified library.

  python scripts/tune.py --target x86 --model xt                  # tune here, <= 30 min by default
  python scripts/tune.py --target arm --rpc-tracker HOST:9190 --rpc-key rk3288   # tune on a board
  python scripts/tune.py --target arm                             # no board: hand schedules, verified under qemu

The log (MetaSchedule's JSON database) goes to a work dir outside the checkout, one per model
and device: <cache>/tuning/<model>-<target>-<size>[-b<batch>]/<device>/ (cache: $PARCNET_TVM_CACHE,
else $XDG_CACHE_HOME/parcnet-tvm, else ~/.cache/parcnet-tvm; device: this CPU, e.g.
amd-f25-m17-znver4, the board rpc-<key>, qemu-<key> or the GPU cuda-sm_90). Rerun the same
command to continue a stopped run. The shipped log tuning_logs/<model>-<target>-<size>/ and
--warm-start logs are read only, and only if measured on the same device (device.json).
"""

import argparse
import functools
import sys

from parcnet_tvm import tune
from parcnet_tvm.board import add_board_arguments
from parcnet_tvm.cli import run_main
from parcnet_tvm.model import VARIANTS
from parcnet_tvm.targets import TARGET_NAMES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86", help=f"one of {', '.join(TARGET_NAMES)} (default x86)")
    parser.add_argument("--model", default="t", help=f"variant: {', '.join(VARIANTS)} (default t)")
    parser.add_argument("--input-size", default="224",
                        help="224, or HxW such as 200 or 240x320 (any size the official model runs)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpoint", help="weights: a state dict or a training checkpoint (.pth, .pth.tar; "
                        "its EMA weights when it holds both, as timm's --use-ema) or .safetensors; "
                        "random weights if omitted")
    parser.add_argument("--onnx", metavar="FILE.onnx",
                        help="tune and build your ONNX export of ParCNetV2 instead (its input size)")
    parser.add_argument("--resize-kernels", action="store_true",
                        help="resize the oversized kernels to 2H-1 for the input size (the paper, Sec. 3.1) "
                             "instead of the official model's fixed 111/55/27/13")
    budget = parser.add_argument_group("budget (defaults: 8 trials per task per round, 4 rounds, 30 min cap)")
    budget.add_argument("--trials", type=int, help="total trials (default 32 x number of tasks)")
    budget.add_argument("--trials-per-task", type=int,
                        help="the same allowance for every task (default: by FLOP share, 8 to 256; see budget.json)")
    budget.add_argument("--trials-per-iter", type=int, help="candidates per task per round (default 8)")
    budget.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="stop tuning after this long (default 30 when --trials is not given)")
    budget.add_argument("--only", nargs="+", default=(), metavar="NAME",
                        help="tune only tasks whose name contains one of these (e.g. oversized_conv)")
    parser.add_argument("--work-dir", help="tuning log folder (default: <cache>/tuning/<model>-<target>-<size>"
                                           "/<device>, see above)")
    parser.add_argument("--warm-start", nargs="+", default=(), metavar="DIR",
                        help="other tuning logs of this device to reuse (read-only): their tasks are not tuned again")
    add_board_arguments(parser, "tune against N emulated boards (qemu, default 1) under one key: a pipeline "
                        "check, times are not latency", pool=True)
    parser.add_argument("--exact-math", action="store_true", help="exact erf in GELU (default: fast polynomial)")
    parser.add_argument("--cuda-arch", help="CUDA arch when no GPU is visible (default sm_90)")
    parser.add_argument("--mcpu", help="override the detected x86 CPU name (LLVM -mcpu)")
    parser.add_argument("--compare", type=int, default=5, metavar="N",
                        help="time untuned, tuned and PyTorch eager N times each (0: skip)")
    parser.add_argument("--seed", type=int, help="random seed of the search")
    parser.add_argument("--design-space", choices=("ours", "generic"), default="ours",
                        help="ours (default): search within our hand schedules, tile sizes as knobs, where "
                             "one applies; generic: MetaSchedule's own rules for every task")
    parser.add_argument("-o", "--output", help="library path (default build/parcnetv2_<model>-<target>-<size>.so)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        tune(args.model, onnx=args.onnx, target=args.target, input_size=args.input_size, batch=args.batch,
             time_budget=args.time_budget, trials=args.trials, work_dir=args.work_dir, output=args.output,
             log=functools.partial(print, flush=True),  # progress shows up in logs at once
             checkpoint=args.checkpoint, resize_kernels=args.resize_kernels,
             trials_per_task=args.trials_per_task, trials_per_iter=args.trials_per_iter,
             warm_start=tuple(args.warm_start), rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, rpc=args.rpc,
             emulate=args.emulate, only=tuple(args.only), mcpu=args.mcpu, cuda_arch=args.cuda_arch,
             exact_math=args.exact_math, compare=args.compare, seed=args.seed, design_space=args.design_space)
    except KeyboardInterrupt:
        print("interrupted: every trial measured so far is in the tuning log; rerun the same command "
              "to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_main(main)
