#!/usr/bin/env python3
"""Assemble the board bundle for an ARM library built by scripts/build.py --target arm.

  python scripts/package_arm.py build/t-arm.so -o dist/parcnetv2_t-arm/

The bundle: the model .so + manifest, libtvm_runtime.so + libtvm_ffi.so, parcnet_runner,
parcnet_rpc_server and a README for the board. With --check, the bundle's runner is run
under qemu on a fixed input and its top-5 compared with PyTorch's.
"""

import argparse

from parcnet_tvm import manifest as manifest_io
from parcnet_tvm.arm_bundle import package
from parcnet_tvm.cli import run_main
from parcnet_tvm.runtime import build_runtime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="an ARM library (.so with its .json manifest)")
    parser.add_argument("-o", "--output", required=True, help="bundle directory, e.g. dist/parcnetv2_t-arm/")
    parser.add_argument("--check", action="store_true", help="run the bundle's runner under qemu and compare top-5")
    args = parser.parse_args(argv)
    manifest_io.read(args.library)  # a wrong path is one line before minutes of runtime build
    build_runtime(log=lambda *_: None)
    out, report = package(args.library, args.output, check=args.check)
    if report:
        print(report)
    print(f"bundle written to {out}/")
    return 0


if __name__ == "__main__":
    run_main(main)
