"""What the tests share: sizes, markers and helpers (imported as `from support import ...`)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parcnet_tvm.board import free_port

ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # smallest input that keeps every stage (64 / 32 = 2x2 last map)

# CI installs the cross toolchain; elsewhere a test that needs it skips with the reason.
needs_arm_toolchain = pytest.mark.skipif(
    shutil.which("arm-linux-gnueabihf-g++") is None and not os.environ.get("CI"),
    reason="arm-linux-gnueabihf-g++ not installed (apt-get install g++-arm-linux-gnueabihf)",
)


def run_script(name, *args, cwd=None, env=None):
    """Run scripts/<name> as a user would (extra environment in `env`); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
        capture_output=True, text=True, cwd=cwd or ROOT, timeout=900,
        env={**os.environ, **(env or {})},
    )


def cuda_kernel_limits(source: str) -> list[tuple[int, int]]:
    """(static shared-memory bytes, threads) of every kernel in a CUDA source (float arrays)."""
    kernels = [k for k in source.split("__global__ void __launch_bounds__(")[1:]
               if k.split("\n")[0].endswith("{")]  # definitions, not declarations
    return [(4 * sum(int(n) for n in re.findall(r"__shared__ alignas\(\d+\) float \w+\[(\d+)\];", k)),
             int(k.split(")")[0])) for k in kernels]
