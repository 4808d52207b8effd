"""ARM NEON schedule of the oversized op for Cortex-A17 (armv7-a).

4-lane fp32 vectors and 16 quad registers: the accumulator tile takes at most 8 of them,
leaving room for the broadcast tap and the input vectors; a 32 KiB L1D holds the per-channel
H x W intermediate of every stage (56 x 56 x 4 B = 12.25 KiB at stage 1).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .cpu_tiling import CpuLimits, schedule_cpu

NEON_LIMITS = CpuLimits(lanes=4, accumulator_vectors=8, max_col_vectors=4)


def is_arm(target: Target) -> bool:
    return target.kind.name == "llvm" and ("arm_cpu" in target.keys or
                                           str(target.attrs.get("mtriple", "")).startswith("arm"))


class OversizedConvArm(ScheduleRule):
    def is_target_available(self, target: Target) -> bool:
        return is_arm(target)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        return sch if schedule_cpu(sch, NEON_LIMITS, tunable) else None

    def apply_to(self, sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule]:
        schedule_cpu(sch, NEON_LIMITS, tunable=True)
        return [sch]
