#!/usr/bin/env python3
"""Time one oversized H+W conv pair per stage shape of ParCNetV2: PyTorch vs TVM vs our op.

  python scripts/bench_op.py --target x86 --json bench_op.json

Every implementation runs in this one process, on the same input, with the same thread
count; each TVM result is checked against PyTorch before it is timed.
"""

import argparse
import json
import platform

from parcnet_tvm import ParcnetError
from parcnet_tvm.bench_op import (
    IMPLS,
    TUNED,
    bench_shape,
    format_table,
    stage_shapes,
    tune_shape,
)
from parcnet_tvm.cli import run_main
from parcnet_tvm.runtime import why_not_runnable
from parcnet_tvm.targets import cpu_model_name, get_target, host_cores
from parcnet_tvm.tuning.device import check_build_log
from parcnet_tvm.tuning_log import require_log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86", help="x86 (cuda needs a GPU; arm needs a board)")
    parser.add_argument("--model", nargs="+", default=["xt", "t"])
    parser.add_argument("--input-size", default="224")
    parser.add_argument("--batch", type=int, default=1, help="images per call (the paper times GPUs at 32)")
    parser.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--repeat", type=int, default=20, help="timed samples per impl (median reported)")
    parser.add_argument("--number", type=int, default=10, help="calls per timed sample")
    parser.add_argument("--tuning-log", help="MetaSchedule database: adds the ours-tuned row")
    parser.add_argument("--tune-trials", type=int, default=0, metavar="N",
                        help="first tune our op for each shape, N trials each, into --tuning-log")
    parser.add_argument("--any-device", action="store_true", help="apply a --tuning-log measured on another device")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    named_target = get_target(args.target)
    reason = why_not_runnable(named_target)
    if reason:
        raise ParcnetError(f"cannot time {args.target} here: {reason}")
    gpu = ""
    if named_target.name == "cuda":
        import torch

        gpu = (f" ({torch.cuda.get_device_name(0)}, PyTorch's conv: cuDNN {torch.backends.cudnn.version()}; "
               "timed without Python's per-call cost: PyTorch from a CUDA graph, TVM by the VM's C++ timer)")
    print(f"machine: {cpu_model_name()}, {host_cores()} threads, {platform.machine()}; "
          f"target {named_target.description}{gpu}; batch {args.batch}")
    for flag in ("repeat", "number", "batch"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ParcnetError(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    if args.tune_trials and not args.tuning_log:
        raise ParcnetError("--tune-trials needs --tuning-log DIR to write the database to")
    if args.tuning_log and not args.tune_trials:  # tuning into it refuses another device's log itself
        require_log(args.tuning_log)
        check_build_log(args.tuning_log, named_target, any_device=args.any_device)
    impls = list(args.impl) + ([TUNED] if args.tuning_log else [])
    rows = []
    for shape in stage_shapes(args.model, args.input_size):
        if args.tune_trials:
            print(f"  tuning {shape['model']} stage {shape['stage']} ({args.tune_trials} trials)...", flush=True)
            tune_shape(shape, named_target, args.tuning_log, args.tune_trials)
        rows += bench_shape(shape, named_target, impls, repeat=args.repeat, number=args.number,
                            tuning_log=args.tuning_log, batch=args.batch)
        print(f"  {shape['model']} stage {shape['stage']}: " +
              ", ".join(f"{r['impl']} {r['median_ms']:.4f} ms" for r in rows[-len(impls):]), flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    run_main(main)
