"""Hand-written schedules for the oversized depth-wise convolution, one module per target family.

Each rule is a dlight `ScheduleRule` (pattern check + schedule): `apply_hand_schedules` uses
them for untuned builds, and `register_metaschedule_rules` hands the same code to
MetaSchedule as the design space of our op's tasks, with tile sizes as sampled knobs.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm.s_tir.dlight import ApplyDefaultSchedule

from parcnet_tvm.oversized import SCHEDULE_RULE

from .arm import OversizedConvArm
from .cpu_fallback import ParallelVectorizeFallback
from .cuda import OversizedConvCuda
from .x86 import OversizedConvX86

RULES = (OversizedConvArm(), OversizedConvX86(), OversizedConvCuda())
# Tried after ours, on whatever is left unscheduled (CPU only: for CUDA, TVM's pipeline
# applies dlight's GPU rules to the rest).
FALLBACKS = (ParallelVectorizeFallback(),)
# MetaSchedule looks up "s_tir.meta_schedule.<target key>.<schedule_rule>" for each key of
# the target in order: ARM targets have keys (arm_cpu, cpu), x86 (cpu), CUDA (cuda, gpu).
TARGET_KEYS = {"arm_cpu": RULES[0], "cpu": RULES[1], "cuda": RULES[2]}


def apply_hand_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc of a legalized, fused `mod` that is not scheduled yet (untuned
    or missing from the tuning database): our op by its rule, the rest by the fallback."""
    rules = [rule for rule in (*RULES, *FALLBACKS) if rule.is_target_available(target)]
    with target:
        return ApplyDefaultSchedule(*rules)(mod)


def _register(key: str, rule) -> None:
    def custom_rule(sch, block):  # (Schedule, SBlockRV) -> [Schedule]
        target = tvm.target.Target.current(allow_none=True) or _target_for(key)
        return rule.apply_to(sch, target)

    tvm_ffi.register_global_func(f"s_tir.meta_schedule.{key}.{SCHEDULE_RULE}", custom_rule, override=True)


def _target_for(key: str) -> tvm.target.Target:
    from parcnet_tvm.targets import get_target

    return get_target({"arm_cpu": "arm", "cpu": "x86", "cuda": "cuda"}[key]).target


def register_metaschedule_rules() -> None:
    for key, rule in TARGET_KEYS.items():
        _register(key, rule)


register_metaschedule_rules()
