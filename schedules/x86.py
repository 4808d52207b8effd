"""x86 (AVX2 / AVX-512) schedule of the oversized op."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import HandRule
from .cpu_target import cpu_target, is_x86
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
