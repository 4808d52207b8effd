#!/usr/bin/env python3
"""Benchmark ParCNetV2 libraries against PyTorch eager, torch.compile, ONNX Runtime, OpenVINO, MNN and
ncnn, side by side.

  python scripts/bench.py --target x86 --model xt t --batch 1 32 --json bench.json --plot bench.png
  python scripts/bench.py --target cuda --model t --batch 1 32          # on a machine with a GPU
  python scripts/bench.py --target arm --rpc-tracker HOST:9190 --rpc-key rk3288 --pytorch-ms 812
  python scripts/bench.py --target arm --emulate                        # correctness only, no times

x86/CUDA: each backend runs in a fresh process, one after the other, at the same thread count, in
--rounds alternating rounds; rows give the median (of the round medians) and p90 after warm-up and
the peak memory the backend added (see parcnet_tvm/bench/__init__.py). OpenVINO, MNN and ncnn run
fp32 models converted once (build/bench/) and are timed only if their output matches PyTorch's.
ARM: the TVM libraries are checked and timed on the board through RPC; --pytorch-ms adds PyTorch's
time measured on the board ([MODEL[@BATCH]=]MS, e.g. xt=812 t@32=9650).
tvm-tuned uses --tuning-log, else this device's tune.py log (<cache>/tuning/<model>-<target>-<size>/<device>/),
else the shipped log tuning_logs/<model>-<target>-<size>[-b<batch>]/ if this device measured it; a log
measured on another device is refused (the row says so) unless --any-device.
"""

import argparse
import functools

from parcnet_tvm import board
from parcnet_tvm.bench import BACKENDS, BenchRequest, run_bench
from parcnet_tvm.cli import run_main
from parcnet_tvm.targets import host_cores


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86", help="x86 (default), arm (a board through RPC) or cuda")
    parser.add_argument("--model", nargs="+", default=["xt", "t"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--input-size", default="224")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per backend (default 30)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="x86/CUDA: time every backend once per round, fresh process each, same order; "
                             "the median of the round medians is reported (default 3; 1: one pass)")
    parser.add_argument("--max-seconds", type=float, default=60,
                        help="fewer repeats (at least 2) for a backend whose runs would take longer than this")
    parser.add_argument("--threads", type=int, default=host_cores(), help="threads for every backend (default all cores)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        help="default: all that apply to the target")
    parser.add_argument("--tuning-log", nargs="+", default=[], metavar="DIR", help="logs for tvm-tuned")
    parser.add_argument("--any-device", action="store_true",
                        help="let tvm-tuned apply logs measured on another device (default: refused)")
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="write a bar chart (matplotlib)")
    arm = board.add_board_arguments(parser, "run on the emulated board (qemu): checks correctness, shows no times")
    arm.add_argument("--pytorch-ms", nargs="+", default=[], metavar="[MODEL[@BATCH]=]MS",
                     help="PyTorch eager time measured on the board")
    return parser.parse_args(argv)


def main(argv=None):
    run_bench(BenchRequest(**vars(parse_args(argv))), log=functools.partial(print, flush=True))
    return 0


if __name__ == "__main__":
    run_main(main)
