"""Hand-written NEON kernels linked into every ARM library (`arm_kernels/*.cc`).

TVM emits every kernel of a library but these, which our ARM libraries call as extern
functions: the GEMM micro-kernel (`arm_kernels/neon_sgemm.cc`, `schedules/neon_gemm.py`) and
the depth-wise 7x7 kernel (`arm_kernels/neon_depthwise.cc`, `schedules/neon_depthwise.py`),
inner loops of our schedules; the GELUs and GELU gates (`arm_kernels/neon_gelu.cc`), whole
rows called from the graph (`gelu_gates.py`).
Their object files are compiled once per source text by the same cross compiler that links the
libraries, cached under build/neon-kernels/<sha>, and passed to every ARM link (a built
library, a tuning trial).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from . import outputs
from .errors import ParcnetError

SOURCES = sorted((Path(__file__).resolve().parent / "arm_kernels").glob("*.cc"))
CACHE = Path(__file__).resolve().parents[1] / "build" / "neon-kernels"
# The board's ISA: ARMv7-A with NEON and VFPv4, hard-float ABI (targets.ARM_CORTEX_A17).
FLAGS = ["-O2", "-mcpu=cortex-a17", "-mfpu=neon-vfpv4", "-mfloat-abi=hard", "-marm", "-fPIC",
         "-fno-exceptions", "-fno-rtti"]


def objects(cxx: str) -> list[str]:
    """The kernels' object files for the cross compiler `cxx`, compiled when not cached."""
    if not SOURCES:  # an install without its package data: libraries would lack the kernels
        raise ParcnetError(f"no NEON kernel sources in {Path(__file__).resolve().parent / 'arm_kernels'}: "
                           "reinstall parcnet-tvm (pip install -e .)")
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.name.encode() + b"\0" + source.read_bytes())
    key.update(" ".join([cxx, *FLAGS]).encode())
    folder = CACHE / key.hexdigest()[:16]
    built = []
    for source in SOURCES:
        obj = folder / (source.stem + ".o")
        if not obj.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with outputs.replacing(obj) as (part,):
                done = subprocess.run([cxx, *FLAGS, "-c", str(source), "-o", str(part)],
                                      capture_output=True, text=True)
                if done.returncode:
                    raise ParcnetError(f"{cxx} could not compile {source.name}: {_first_error(done.stderr, done.returncode)}")
        built.append(str(obj))
    return built


def _first_error(stderr: str, returncode: int) -> str:
    """The compiler's first `error:` line (its last line is often a caret under the source)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [f"exit status {returncode}"])[0]
