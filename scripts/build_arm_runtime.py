#!/usr/bin/env python3
"""Cross-build the TVM runtime, the board runner and the RPC server for ARM Cortex-A17, and
build the qemu counting plugin behind the RK3288 estimate (build/arm-counter/<hash>).

  python scripts/build_arm_runtime.py

Needs cmake >= 3.26, ninja and Debian's arm-linux-gnueabihf toolchain (scripts/setup.sh
installs them). The result is cached in build/arm-runtime/<key>/out; a rerun takes seconds.
"""

import argparse
import time

from parcnet_tvm.cli import run_main
from parcnet_tvm.counting import build_counter
from parcnet_tvm.runtime import build_runtime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="cache directory (default build/arm-runtime)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = build_runtime(args.cache, args.jobs)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.iterdir()))
    print(f"{out}: {sizes} ({time.perf_counter() - start:.0f} s)")
    print(f"qemu counting plugin: {build_counter(log=lambda *_: None)}")
    return 0


if __name__ == "__main__":
    run_main(main)
