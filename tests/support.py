"""What the tests share: sizes, markers and helpers (imported as `from support import ...`)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parcnet_tvm.tuning_log import RECORD_FILE

ROOT = Path(__file__).resolve().parents[1]
SMALL = 64  # smallest input that keeps every stage (64 / 32 = 2x2 last map)
ONLY = ("oversized_conv",)  # XT at 64 has 4 such tasks (one per stage): cheap to tune

# Whole-model cases beyond one of each kind: `python3 -m pytest -m slow` runs them (the
# default run leaves them out, pyproject.toml's addopts).
slow = pytest.mark.slow

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


def random_state(model, seed=7):
    """A state dict of `model`'s shapes with small random values."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}


def record_lines(work_dir):
    """The lines of a tuning log's records file (none if it does not exist yet)."""
    path = work_dir / RECORD_FILE
    return path.read_text().splitlines() if path.is_file() else []
