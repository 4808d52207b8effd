"""What the CPU rules need to know about a CPU, read from its TVM target.

Vector width and register count come from the instruction set LLVM gives the target (its
`mcpu` and `mattr`); cache sizes, for this machine's x86 target, from sysfs (targets.host_cpu),
else from a table of the CPUs we name (a generic core's where the name is not in it); the core
count from the target's `num-cores`. No rule uses a tile size measured on one machine: every
tile is derived from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target import Target

from .. import targets
from .common import HandRule

KIB = 1024

# (L1D, L2) per core, for targets other than this machine (boards, other x86 machines) and
# where sysfs is missing. RK3288's 1 MiB L2 is shared by its four Cortex-A17 cores.
CACHES = {
    "cortex-a17": (32 * KIB, 256 * KIB),
    "haswell": (32 * KIB, 256 * KIB), "broadwell": (32 * KIB, 256 * KIB), "skylake": (32 * KIB, 256 * KIB),
    "skylake-avx512": (32 * KIB, 1024 * KIB), "cascadelake": (32 * KIB, 1024 * KIB),
    "icelake-server": (48 * KIB, 1280 * KIB), "sapphirerapids": (48 * KIB, 2048 * KIB),
    "znver2": (32 * KIB, 512 * KIB), "znver3": (32 * KIB, 512 * KIB),
    "znver4": (32 * KIB, 1024 * KIB), "znver5": (48 * KIB, 1024 * KIB),
}
GENERIC_CACHES = (32 * KIB, 256 * KIB)


@dataclass(frozen=True)
class CpuTarget:
    isa: str               # avx512 | avx2 | sse | neon
    lanes: int             # fp32 lanes per vector register
    vector_registers: int  # architectural vector registers
    cores: int
    l1_bytes: int
    l2_bytes: int

    @property
    def parallel_jobs(self) -> int:
        """Parallel chunks to aim for: a few per core, so that uneven chunks still balance."""
        return 4 * self.cores


def is_arm(target: Target) -> bool:
    return target.kind.name == "llvm" and ("arm_cpu" in target.keys or
                                           str(target.attrs.get("mtriple", "")).startswith("arm"))


def is_x86(target: Target) -> bool:
    return target.kind.name == "llvm" and not is_arm(target) and \
        not str(target.attrs.get("mtriple", "x86")).startswith("aarch64")


def _caches(target: Target, mcpu: str) -> tuple[int, int]:
    """(L1D, L2 per core). The target built for this machine (x86, no `mtriple` naming another
    machine, the `mcpu` detected here) gets the caches sysfs reports; a target only says its
    CPU's name, so any other one gets its name's entry in the table."""
    if is_x86(target) and "mtriple" not in target.attrs:
        host = targets.host_cpu()
        if mcpu == host.mcpu and host.l1d_bytes and host.l2_bytes:
            return host.l1d_bytes, host.l2_per_core
    return CACHES.get(mcpu, GENERIC_CACHES)


def cpu_target(target: Target) -> CpuTarget:
    mcpu = str(target.attrs.get("mcpu", ""))
    cores = int(target.attrs.get("num-cores", 1))
    l1, l2 = _caches(target, mcpu)
    if is_arm(target):  # ARMv7 NEON: 16 quad (128-bit) registers
        return CpuTarget("neon", 4, 16, cores, l1, l2)
    features = tvm.target.codegen.llvm_get_cpu_features(target)  # mcpu's and mattr's
    if "avx512f" in features:
        return CpuTarget("avx512", 16, 32, cores, l1, l2)
    if "avx2" in features:
        return CpuTarget("avx2", 8, 16, cores, l1, l2)
    return CpuTarget("sse", 4, 16, cores, l1, l2)


class CpuHandRule(HandRule):
    """A hand rule for every LLVM CPU target (x86 and ARM alike): its tiles come from
    `cpu_target`."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"
