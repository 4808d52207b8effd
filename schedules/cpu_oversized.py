"""Our oversized op on CPUs: x86 (AVX2 / AVX-512) and ARM NEON (Cortex-A17, armv7-a).

Both are the register tiling of `cpu_tiling.schedule_cpu` with the ISA's limits. NEON: 4-lane
fp32 vectors and 16 quad registers, so the accumulator tile takes at most 8 of them, leaving
room for the broadcast tap and the input vectors; a 32 KiB L1D holds the per-channel H x W
intermediate of every stage (56 x 56 x 4 B = 12.25 KiB at stage 1).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import HandRule
from .cpu_target import cpu_target, is_arm, is_x86
from .cpu_tiling import CpuLimits, schedule_cpu


def x86_limits(target: Target) -> CpuLimits:
    """AVX-512: 16 lanes, 32 registers; AVX2: 8 lanes, 16 registers (measured best: 14 accumulators)."""
    if cpu_target(target).isa == "avx512":
        return CpuLimits(lanes=16, accumulator_vectors=16, max_col_vectors=4)
    return CpuLimits(lanes=8, accumulator_vectors=14, max_col_vectors=7)


class OversizedConvX86(HandRule):
    def is_target_available(self, target: Target) -> bool:
        return is_x86(target)

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cpu(sch, x86_limits(target), tunable)


NEON_LIMITS = CpuLimits(lanes=4, accumulator_vectors=8, max_col_vectors=4)


class OversizedConvArm(HandRule):
    def is_target_available(self, target: Target) -> bool:
        return is_arm(target)

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cpu(sch, NEON_LIMITS, tunable)
