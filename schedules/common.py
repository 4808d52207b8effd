"""What the per-target schedules share: finding our op's blocks and declaring tile knobs."""

from __future__ import annotations

import contextlib
import inspect

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError
from tvm.target import Target

from parcnet_tvm.oversized import H_BLOCK, SCHEDULE_RULE, W_BLOCK


@contextlib.contextmanager
def frames_without_source():
    """TVMScript parsed in here gets call stacks without source lines. Each `@T.prim_func` calls
    inspect.stack(), which reads every frame's source line and, to find it, scans sys.modules
    once per frame: slow with torch imported. TVM's ~300 tensor intrinsics, which the first
    TuneContext imports, took 24-39 s of every tuning process here, 10 s without source lines.
    The parser looks at the frames' variables; it reads a source line only for a function
    defined in a class (an ir_module), which none of the functions parsed in here is."""
    original = inspect.stack
    inspect.stack = lambda context=1: original(0)
    try:
        yield
    finally:
        inspect.stack = original


def oversized_blocks(sch: s_tir.Schedule):
    """(h_block or None, w_block or None, output block) of our op in `sch`, or None if absent."""
    found = {}
    for name in (H_BLOCK, W_BLOCK):
        try:
            found[name] = sch.get_sblock(name)
        except Exception:  # the schedule raises when no block has that name
            found[name] = None
    h_block, w_block = found[H_BLOCK], found[W_BLOCK]
    if h_block is None and w_block is None:
        return None
    output = w_block if w_block is not None else h_block
    rule = sch.get(output).annotations.get("schedule_rule")
    if rule is None or str(rule) != SCHEDULE_RULE:
        return None
    return h_block, w_block, output


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in divisors(n) if d <= limit)


def knob(sch: s_tir.Schedule, candidates: list[int], default: int, tunable: bool):
    """A tile size: the default when building untuned, a MetaSchedule-sampled choice when tuning."""
    if not tunable or len(candidates) == 1:
        return default
    return sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates))


def mark_root_untouchable(sch: s_tir.Schedule) -> None:
    """Stop MetaSchedule's ParallelVectorizeUnroll from annotating the root block: it would
    mark the root parallel, and the postproc then rejects every candidate (shared notes)."""
    root = sch.get_sblock("root")
    sch.annotate(root, "schedule_rule", "None")


class HandRule(ScheduleRule):
    """A hand schedule of one kind of op for one target family, usable both ways: `apply`
    (dlight, untuned builds: fixed tiles) and `apply_to` (MetaSchedule's custom rule for the
    blocks annotated with `schedule_rule` = `name`: sampled tiles)."""

    name = SCHEDULE_RULE  # our oversized op's; other ops' rules say their own

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        """Schedule the op in `sch` in place; False when `sch` holds none."""
        raise NotImplementedError

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            return sch if self.schedule(sch, target, tunable) else None
        except ScheduleError:  # a shape the primitives refuse: leave the func to the next rule
            return None

    def apply_to(self, sch: s_tir.Schedule, target: Target) -> list[s_tir.Schedule]:
        # MetaSchedule calls the rule once per annotated block; the first call schedules the
        # whole op (and marks the root), later calls must leave it alone.
        if not _root_marked(sch):
            self.schedule(sch, target, tunable=True)
        return [sch]


class CudaHandRule(HandRule):
    """A hand rule for CUDA targets."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "cuda"


def _root_marked(sch: s_tir.Schedule) -> bool:
    rule = sch.get(sch.get_sblock("root")).annotations.get("schedule_rule")
    return rule is not None and str(rule) == "None"
