"""What the CPU rules need to know about a CPU, read from its TVM target alone.

Vector width and register count come from the instruction set the target names (its
`mcpu`, or `mattr` flags); cache sizes from a table of the CPUs we name (a generic core's
where the name is not in it); the core count from the target's `num-cores`. No rule uses a
tile size measured on one machine: every tile is derived from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target

from .common import HandRule

KIB = 1024

# LLVM CPU names by vector extension (what `targets.detect_x86_mcpu` and users pass).
AVX512_CPUS = {"skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
               "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
               "graniterapids", "znver4", "znver5"}
AVX2_CPUS = {"haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
             "znver1", "znver2", "znver3", "x86-64-v3"}

# (L1D, L2) per core. RK3288's 1 MiB L2 is shared by its four Cortex-A17 cores.
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


def cpu_target(target: Target) -> CpuTarget:
    mcpu = str(target.attrs.get("mcpu", ""))
    mattr = {str(flag) for flag in target.attrs.get("mattr", [])}
    cores = int(target.attrs.get("num-cores", 1))
    l1, l2 = CACHES.get(mcpu, GENERIC_CACHES)
    if is_arm(target):  # ARMv7 NEON: 16 quad (128-bit) registers
        return CpuTarget("neon", 4, 16, cores, l1, l2)
    if mcpu in AVX512_CPUS or "+avx512f" in mattr:
        return CpuTarget("avx512", 16, 32, cores, l1, l2)
    if mcpu in AVX2_CPUS or "+avx2" in mattr:
        return CpuTarget("avx2", 8, 16, cores, l1, l2)
    return CpuTarget("sse", 4, 16, cores, l1, l2)


class CpuHandRule(HandRule):
    """A hand rule for every LLVM CPU target (x86 and ARM alike): its tiles come from
    `cpu_target`."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"
