#!/usr/bin/env python3
"""Benchmark ParCNetV2 libraries against PyTorch eager, torch.compile and ONNX Runtime, side by side.

  python scripts/bench.py --target x86 --model xt t --batch 1 --json bench.json --plot bench.png

Each backend runs in a fresh process, one after the other, at the same thread count; rows give
the median and p90 after warm-up and the peak memory the backend added (see parcnet_tvm/bench.py).
tvm-tuned uses --tuning-log, else the shipped log tuning_logs/<model>-<target>-<size>[-b<batch>]/.
"""

import argparse
import functools
import json

from parcnet_tvm.bench import BACKENDS, BenchCase, bench_case, format_table, json_rows, machine_header, plot
from parcnet_tvm.cli import run_main
from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.model import parse_input_size, variant_key
from parcnet_tvm.targets import host_cores
from parcnet_tvm.tuning_log import has_log


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86", help="x86 (ARM and CUDA: not yet, see README)")
    parser.add_argument("--model", nargs="+", default=["xt", "t"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--input-size", default="224")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per backend (default 30)")
    parser.add_argument("--max-seconds", type=float, default=60,
                        help="fewer repeats (at least 2) for a backend whose runs would take longer than this")
    parser.add_argument("--threads", type=int, default=host_cores(), help="threads for every backend (default all cores)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--tuning-log", nargs="+", default=[], metavar="DIR", help="logs for tvm-tuned")
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write a bar chart (matplotlib)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.target != "x86":
        raise ParcnetError(f"bench.py --target {args.target}: only x86 is benchmarked so far; time ARM libraries "
                           "on the board (parcnet_runner --repeat N) and CUDA ones with build.py --time")
    if args.repeat < 2 or args.threads < 1:
        raise ParcnetError("--repeat must be >= 2 and --threads >= 1")
    for log_dir in args.tuning_log:
        if not has_log(log_dir):
            raise ParcnetError(f"--tuning-log {log_dir}: no tuning log there (a work dir of scripts/tune.py)")
    size = parse_input_size(args.input_size)
    models = [variant_key(m) for m in args.model]
    log = functools.partial(print, flush=True)
    rows = []
    for batch in args.batch:
        if batch < 1:
            raise ParcnetError(f"--batch {batch} must be >= 1")
        for model in models:
            rows += bench_case(BenchCase(model, batch, size, args.target), args.backends, args.repeat, args.threads,
                               args.max_seconds, args.tuning_log or None, log)
    header = machine_header(args.threads)
    print(format_table(rows, header))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(json_rows(rows), out, indent=1)
        print(f"rows written to {args.json}")
    if args.plot:
        reason = plot(rows, header, args.plot)
        print(f"plot: skipped ({reason})" if reason else f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
