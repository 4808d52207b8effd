"""Counting what an ARM program executes on the emulated board, for the RK3288 estimate.

Our qemu plugin (`arm_counter/counter.c`, built here with the host's C compiler and cached
under build/arm-counter/<hash>) counts, per guest thread, the instructions by class, the bytes
they move and the misses of a simulated RK3288 data cache (32 KB 4-way L1D per core, 1 MB
16-way shared L2, 64-byte lines), between the markers a program places around its timed runs
(our runner does, around `--repeat`). Waiting is kept out of the counts: the thread pools are
told not to spin (TVM_THREAD_POOL_SPIN_COUNT=0, OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0) and
the plugin drops what a thread runs between two sched_yield calls (TVM's WaitForJobs loop).

Counts are not time: `estimate.py` turns them into an estimate of the board's latency.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import outputs
from .errors import ParcnetError
from .runtime import qemu_prefix, runtime_dir

SOURCE = Path(__file__).resolve().parent / "arm_counter" / "counter.c"
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "build" / "arm-counter"
# Thread pools sleep instead of spinning while they wait, so waiting is not counted as work.
NO_SPIN_ENV = {"TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
CLASSES = ("neon_q_mac", "neon_q", "neon_d_mac", "neon_d", "simd_load", "simd_store", "vfp",
           "int_alu", "int_load", "int_store", "branch", "other")


def counter_path(cache=None) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    return Path(cache or DEFAULT_CACHE) / key / "libparcnet_counter.so"


def build_counter(cache=None, log=print) -> Path:
    """Compile the plugin (or find it in the cache): one C file, a second with gcc."""
    path = counter_path(cache)
    if path.is_file():
        return path
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ParcnetError("the qemu counting plugin needs a C compiler: apt-get install gcc")
    path.parent.mkdir(parents=True, exist_ok=True)
    with outputs.replacing(path) as (partial,):
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-o", str(partial),
                               str(SOURCE), "-lpthread"], capture_output=True, text=True)
        if done.returncode != 0:
            raise ParcnetError(f"building the qemu counting plugin failed:\n{done.stderr[-2000:]}")
    log(f"qemu counting plugin: built {path}")
    return path


@dataclass
class Counts:
    """One counted window: per guest thread, instruction classes, bytes and cache misses;
    per translation block (when asked for) executions and misses, to name kernels."""

    threads: list[dict]
    blocks: list[list[int]]
    block_columns: list[str]
    image_base: int
    windows: int

    @classmethod
    def read(cls, path) -> Counts:
        data = json.loads(Path(path).read_text())
        return cls(data["threads"], data["blocks"], data["block_columns"], data["image_base"], data["windows"])

    def busy_threads(self) -> list[dict]:
        """Threads that did work in the window (idle pool threads left out)."""
        return [t for t in self.threads if t["insns"] > 0]

    def per_symbol(self, elf_path) -> dict[str, dict]:
        """Executed classes and misses per function of the library loaded at `image_base`."""
        if not self.blocks or not self.image_base:
            raise ParcnetError("no per-block counts with a library address: count with tbs=True")
        starts, ends, names = _symbols(elf_path)
        col = {name: i for i, name in enumerate(self.block_columns)}
        totals: dict[str, dict] = {}
        for block in self.blocks:
            offset = block[col["vaddr"]] - self.image_base
            at = bisect.bisect_right(starts, offset) - 1
            if at < 0 or offset >= ends[at]:
                continue  # outside the library's functions: the runtime, libc
            row = totals.setdefault(names[at], dict.fromkeys((*CLASSES, "l1_misses", "l2_misses"), 0))
            execs = block[col["execs"]]
            for name in CLASSES:
                row[name] += execs * block[col[name]]
            row["l1_misses"] += block[col["l1_misses"]]
            row["l2_misses"] += block[col["l2_misses"]]
        return totals


def _symbols(elf_path) -> tuple[list[int], list[int], list[str]]:
    """(starts, ends, names) of the function symbols of an ARM ELF, sorted by address (nm)."""
    nm = shutil.which("arm-linux-gnueabihf-nm")
    if nm is None:
        raise ParcnetError("arm-linux-gnueabihf-nm not found: apt-get install binutils-arm-linux-gnueabihf")
    out = subprocess.run([nm, "--defined-only", "-n", "-S", str(elf_path)], capture_output=True, text=True, check=True)
    starts, sizes, names = [], [], []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) in (3, 4) and parts[-2] in "tTwW":
            starts.append(int(parts[0], 16) & ~1)  # Thumb functions carry bit 0
            sizes.append(int(parts[1], 16) if len(parts) == 4 else 1)
            names.append(parts[-1])
    # A function runs up to the next symbol: the loops of LLVM's parallel bodies (`*_compute_`)
    # follow them beyond their ELF size. The last one ends at its size (then the library ends).
    ends = starts[1:] + [starts[-1] + sizes[-1]] if starts else []
    return starts, ends, names


def count_program(argv: list[str], threads: int, *, blocks: bool = False, libdir: Path | None = None,
                  timeout: float = 3600, cache=None) -> Counts:
    """Run an ARM program under qemu with the counting plugin; the counts of its marked window."""
    plugin = build_counter(cache, log=lambda _msg: None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        option = f"{plugin},out={out}" + (",tbs=on" if blocks else "")
        cmd = qemu_prefix(libdir) + ["-plugin", option]
        for name, value in {**NO_SPIN_ENV, "TVM_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}.items():
            cmd += ["-E", f"{name}={value}"]
        done = subprocess.run(cmd + [str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not out.is_file():
            raise ParcnetError(f"counting under qemu failed ({' '.join(map(str, argv[:2]))}): "
                               f"{(done.stderr or done.stdout).strip()[-1500:]}")
        counts = Counts.read(out)
    if counts.windows != 1:
        raise ParcnetError(f"{argv[0]} marked {counts.windows} counting windows; expected one timed run")
    return counts


def count_library(library, input_shape, threads: int, *, blocks: bool = False, runtime: Path | None = None) -> Counts:
    """Counts of one run of a parcnet-tvm ARM library (after one warm-up run) on `threads` cores."""
    import numpy as np

    runtime = runtime or runtime_dir()
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "input.raw"
        np.random.default_rng(0).standard_normal(input_shape).astype(np.float32).tofile(inp)
        return count_program([runtime / "parcnet_runner", library, "--input", inp, "--repeat", "1",
                              "--threads", threads], threads, blocks=blocks, libdir=runtime)
