"""x86 (AVX2 / AVX-512) schedule of the oversized op."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .cpu_tiling import CpuLimits, schedule_cpu

AVX512_FLAGS = ("avx512f",)


def x86_limits(target: Target) -> CpuLimits:
    """AVX-512: 16 lanes, 32 registers; AVX2: 8 lanes, 16 registers (measured best: 14 accumulators)."""
    mcpu = str(target.attrs.get("mcpu", ""))
    wide = mcpu in ("znver4", "icelake-server", "skylake-avx512", "sapphirerapids", "cascadelake") or \
        "x86-64-v4" in mcpu
    if wide:
        return CpuLimits(lanes=16, accumulator_vectors=16, max_col_vectors=4)
    return CpuLimits(lanes=8, accumulator_vectors=14, max_col_vectors=7)


def is_x86(target: Target) -> bool:
    return target.kind.name == "llvm" and "arm_cpu" not in target.keys and \
        not str(target.attrs.get("mtriple", "x86")).startswith(("arm", "aarch64"))


class OversizedConvX86(ScheduleRule):
    def is_target_available(self, target: Target) -> bool:
        return is_x86(target)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        return sch if schedule_cpu(sch, x86_limits(target), tunable) else None

    def apply_to(self, sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule]:
        """MetaSchedule entry: tile sizes become sampled knobs."""
        schedule_cpu(sch, x86_limits(target), tunable=True)
        return [sch]
