"""ARM NEON schedule of the oversized op for Cortex-A17 (armv7-a).

4-lane fp32 vectors and 16 quad registers: the accumulator tile takes at most 8 of them,
leaving room for the broadcast tap and the input vectors; a 32 KiB L1D holds the per-channel
H x W intermediate of every stage (56 x 56 x 4 B = 12.25 KiB at stage 1).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import HandRule
from .cpu_target import is_arm
from .cpu_tiling import CpuLimits, schedule_cpu

NEON_LIMITS = CpuLimits(lanes=4, accumulator_vectors=8, max_col_vectors=4)



class OversizedConvArm(HandRule):
    def is_target_available(self, target: Target) -> bool:
        return is_arm(target)

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cpu(sch, NEON_LIMITS, tunable)
