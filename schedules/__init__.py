"""Hand-written schedules: the oversized depth-wise convolution, one module per target family;
CUDA's small depth-wise convs; the CPU fallback for every other op of an untuned build.

Each rule is a dlight `ScheduleRule` (pattern check + schedule): `apply_hand_schedules` uses
them for untuned builds, and `register_metaschedule_rules` hands the same code to
MetaSchedule as the design space of the blocks annotated for it (our op, and on CUDA the
depth-wise convs), with tile sizes as sampled knobs.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm.s_tir.dlight import ApplyDefaultSchedule

from .arm import OversizedConvArm
from .cpu_fallback import ParallelVectorizeFallback
from .cuda import OversizedConvCuda
from .cuda_depthwise import DepthwiseConvCuda, mark_depthwise_convs
from .x86 import OversizedConvX86

OVERSIZED_ARM, OVERSIZED_X86, OVERSIZED_CUDA = OversizedConvArm(), OversizedConvX86(), OversizedConvCuda()
DEPTHWISE_CUDA = DepthwiseConvCuda()
# Tried in this order on every PrimFunc not scheduled yet: our op; on CPUs every other op by
# the fallback; on CUDA the small depth-wise convs, which dlight has no rule for (TVM's
# pipeline applies dlight's GPU rules to the rest).
RULES = (OVERSIZED_ARM, OVERSIZED_X86, OVERSIZED_CUDA, ParallelVectorizeFallback(), DEPTHWISE_CUDA)
# MetaSchedule looks up "s_tir.meta_schedule.<target key>.<schedule_rule>" for each key of
# the target in order: ARM targets have keys (arm_cpu, cpu), x86 (cpu), CUDA (cuda, gpu).
TUNABLE_RULES = {"arm_cpu": (OVERSIZED_ARM,), "cpu": (OVERSIZED_X86,), "cuda": (OVERSIZED_CUDA, DEPTHWISE_CUDA)}


def apply_hand_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc of a legalized, fused `mod` that is not scheduled yet (untuned
    or missing from the tuning database): our op by its rule, the rest by the fallback."""
    rules = [rule for rule in RULES if rule.is_target_available(target)]
    with target:
        return ApplyDefaultSchedule(*rules)(mod)


def _register(key: str, rule) -> None:
    def custom_rule(sch, block):  # (Schedule, SBlockRV) -> [Schedule]
        target = tvm.target.Target.current(allow_none=True) or _target_for(key)
        return rule.apply_to(sch, target)

    tvm_ffi.register_global_func(f"s_tir.meta_schedule.{key}.{rule.name}", custom_rule, override=True)


def _target_for(key: str) -> tvm.target.Target:
    from parcnet_tvm.targets import get_target

    return get_target({"arm_cpu": "arm", "cpu": "x86", "cuda": "cuda"}[key]).target


def register_metaschedule_rules() -> None:
    for key, rules in TUNABLE_RULES.items():
        for rule in rules:
            _register(key, rule)


register_metaschedule_rules()
