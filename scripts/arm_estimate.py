#!/usr/bin/env python3
"""The RK3288 latency estimate: count ARM programs under qemu, fit, and write docs/arm-estimate.json.

  python scripts/arm_estimate.py                                   # refit from the stored counts, print the table
  python scripts/arm_estimate.py --library build/t-arm.so --engine parcnet-tvm --model t
  python scripts/arm_estimate.py --engine ncnn --model resnet50 --published 4=404.01 1=1047.63 \\
      --program /path/to/ncnn_one resnet50.param 224 224 3 {threads}

A --program is any ARM program that brackets one timed inference with the counting markers
(prctl(0x50415243, 1) ... prctl(0x50415243, 0)); {threads} in its arguments becomes the thread
count. It is counted at 4 and at 1 thread; rows of ncnn with --published times are the
calibration, every other row is estimated only. Estimates are not measurements.
"""

import argparse
import functools

from parcnet_tvm.cli import run_main
from parcnet_tvm.estimate import REPORT, report_rows, run_estimate_job


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=str(REPORT), help=f"the JSON report (default {REPORT})")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--library", help="a parcnet-tvm ARM library (its manifest beside it)")
    what.add_argument("--program", nargs=argparse.REMAINDER, help="an ARM program and its arguments")
    parser.add_argument("--engine", help="engine name of the new rows (parcnet-tvm, ncnn, mnn)")
    parser.add_argument("--model", help="model name of the new rows")
    parser.add_argument("--published", nargs="+", default=[], metavar="THREADS=MS",
                        help="published board times (ncnn's table): make the rows calibration rows")
    parser.add_argument("--threads", nargs="+", type=int, default=[4, 1])
    parser.add_argument("--note", help="where the rows' program and model came from")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = run_estimate_job(args, log=functools.partial(print, flush=True))
    print(report_rows(report))
    return 0


if __name__ == "__main__":
    run_main(main)
