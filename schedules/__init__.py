"""Hand-written schedules, one rule per op family and target family.

Each rule is a dlight `ScheduleRule` (pattern check + schedule; `None` when a function is not
its pattern) usable two ways: `schedule_kernels` applies the rules in order to every kernel
a tuning database did not schedule (untuned builds), and `hand_rule_for` gives MetaSchedule
the rule that matches a task, whose sampled tile sizes are then the tuned knobs
(`tune.py --design-space ours`). `register_metaschedule_rules` is for MetaSchedule's generic
space: our op's blocks are annotated with their rule's name.
"""

from __future__ import annotations

import re

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight

from .cpu_conv import ConvNhwcCpu
from .cpu_depthwise import DepthwiseConvCpu
from .cpu_elementwise import ElementwiseCpu
from .cpu_fallback import ParallelVectorizeFallback
from .cpu_gemm import GemmCpu
from .cpu_norm import LayerNormGeneralCpu, ReductionCpu
from .cpu_oversized import OversizedConvArm, OversizedConvX86
from .cuda_depthwise import DepthwiseConvCuda
from .cuda_elementwise import ElementwiseCuda
from .cuda_gemm import GemmCuda
from .cuda_norm import LayerNormGeneralCuda, ReductionCuda
from .cuda_oversized import OversizedConvCuda, cuda_passes
from .neon_gemm import register_intrinsics_named_in

OVERSIZED_ARM, OVERSIZED_X86, OVERSIZED_CUDA = OversizedConvArm(), OversizedConvX86(), OversizedConvCuda()
# Tried in this order on every kernel not scheduled yet: our op, then one rule per op family,
# then a fallback for anything new (CPUs: ours; CUDA: dlight's, which no kernel of our
# models reaches).
CPU_RULES = (OVERSIZED_ARM, OVERSIZED_X86, GemmCpu(), ConvNhwcCpu(), DepthwiseConvCpu(),
             LayerNormGeneralCpu(), ElementwiseCpu(), ReductionCpu(), ParallelVectorizeFallback())
CUDA_RULES = (OVERSIZED_CUDA, GemmCuda(), DepthwiseConvCuda(), LayerNormGeneralCuda(), ElementwiseCuda(),
              ReductionCuda(), dlight.gpu.Fallback())
FROM_DATABASE = "tuning_database"
TVM_DEFAULT = "tvm_default_fallback"  # no rule applied: TVM's naive default lowering
# MetaSchedule looks up "s_tir.meta_schedule.<target key>.<schedule_rule>" for each key of
# the target in order: ARM targets have keys (arm_cpu, cpu), x86 (cpu), CUDA (cuda, gpu).
ANNOTATED_RULES = {"arm_cpu": (OVERSIZED_ARM,), "cpu": (OVERSIZED_X86,), "cuda": (OVERSIZED_CUDA,)}


def op_passes(target_kind: str):
    """How our op's rewrite emits it for a target kind: `passes_for(algo, height, width)`,
    one call for both passes, or one per pass where CUDA's shared memory cannot hold the
    fused op (`rewrite.rewrite_oversized_convs`)."""
    if target_kind == "cuda":
        return cuda_passes
    return lambda algo, height, width: ("hw",)


def rule_name(rule) -> str:
    """Our rules' own names; dlight's as `dlight_<rule>` (its Fallback: `dlight_fallback`)."""
    name = getattr(rule, "name", None)
    if name:
        return name
    return "dlight_" + re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(rule).__name__).lower()


def rules_for(target: tvm.target.Target) -> list:
    rules = CUDA_RULES if target.kind.name == "cuda" else CPU_RULES
    return [rule for rule in rules if rule.is_target_available(target)]


def _is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def schedule_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, dict]:
    """Schedule every kernel (PrimFunc) of a legalized, fused `mod` that a tuning database has
    not scheduled, by the first rule that matches it. Returns the module and which rule
    scheduled which kernels: {rule name: [kernel names]} (`tuning_database` for the kernels
    that came scheduled, the kernel's `parcnet_kernel` for a graph pass's call of a kernel of
    ours, `tvm_default_fallback` for any no rule took)."""
    rules = rules_for(target)
    used: dict[str, list[str]] = {}
    updated = {}
    with target:
        for var, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = var.name_hint
            if _is_scheduled(func):  # by a tuning log, or a graph pass's call of a kernel of ours
                used.setdefault(str(func.attrs.get("parcnet_kernel", FROM_DATABASE)), []).append(name)
                continue
            for rule in rules:
                sch = rule.apply(func, target, False)
                if sch is not None:
                    updated[var] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    used.setdefault(rule_name(rule), []).append(name)
                    break
            else:
                used.setdefault(TVM_DEFAULT, []).append(name)
    mod = mod.clone()  # the caller's module stays unscheduled
    for var, func in updated.items():
        mod[var] = func
    return mod, {rule: sorted(names) for rule, names in sorted(used.items())}


def apply_hand_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    return schedule_kernels(mod, target)[0]


def hand_rule_for(func: tirx.PrimFunc, target: tvm.target.Target):
    """The hand rule (not a fallback, not dlight's) that schedules `func`, or None: its
    schedule with sampled tiles is the task's MetaSchedule design space."""
    with target:
        for rule in rules_for(target):
            if not hasattr(rule, "apply_to") or "fallback" in rule_name(rule):
                continue
            if rule.apply(func, target, False) is not None:
                return rule
    return None


def hand_rule_space(rule, target: tvm.target.Target):
    """MetaSchedule's design space of one task: `rule`'s schedule with its tile knobs sampled."""
    from tvm.s_tir.meta_schedule.space_generator import ScheduleFn

    def space(sch: s_tir.Schedule):
        return rule.apply_to(sch, target)

    return ScheduleFn(space)


def register_metaschedule_rules(target: tvm.target.Target | None = None) -> None:
    """Register our rules for the blocks annotated with their names (MetaSchedule's generic
    space looks them up by name). An explicit call: importing this package registers nothing."""
    for key, rules in ANNOTATED_RULES.items():
        for rule in rules:
            _register(key, rule, target)


def _register(key: str, rule, target) -> None:
    def custom_rule(sch, block):  # (Schedule, SBlockRV) -> [Schedule]
        current = tvm.target.Target.current(allow_none=True) or target
        return rule.apply_to(sch, current)

    tvm_ffi.register_global_func(f"s_tir.meta_schedule.{key}.{rule.name}", custom_rule, override=True)


__all__ = [
    "FROM_DATABASE",
    "apply_hand_schedules",
    "hand_rule_for",
    "hand_rule_space",
    "op_passes",
    "register_metaschedule_rules",
    "register_intrinsics_named_in",
    "rule_name",
    "rules_for",
    "schedule_kernels",
]
