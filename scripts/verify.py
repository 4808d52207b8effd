#!/usr/bin/env python3
"""Verify an exported library against PyTorch using the manifest beside it (OUT.json).

  python scripts/verify.py build/xt.so

Exits non-zero when the library does not match, or cannot run on this machine.
"""

import argparse

from parcnet_tvm.cli import run_main
from parcnet_tvm.verify import verify_library


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="the .so written by scripts/build.py")
    args = parser.parse_args(argv)
    result = verify_library(args.library)
    print(f"{args.library}: matches PyTorch, max abs error {result['max_abs_error']:.2e} "
          f"<= {result['tolerance']:g}")
    return 0


if __name__ == "__main__":
    run_main(main)
