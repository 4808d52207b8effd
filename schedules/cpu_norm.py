"""LayerNormGeneral (our one-op form, `parcnet_tvm/norm.py`) on CPUs.

Token by token, in parallel over tokens: the two sums over the token's channels are each
computed as `lanes` partial sums in one vector register (rfactor), then reduced, and the
output is written as vectors, all while the token's channels are in L1.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import mark_root_untouchable
from .cpu_target import CpuHandRule, cpu_target
from .cpu_tiling import vector_lanes
from .patterns import find_norm

SCHEDULE_RULE = "cpu_layer_norm_general"


def _vector_sum(sch: s_tir.Schedule, block, lanes: int, token_loop) -> None:
    """A sum over the last loop as `lanes` partial sums (one vector), placed under `token_loop`."""
    *_, channel = sch.get_loops(block)
    _, lane = sch.split(channel, [None, lanes])
    partial = sch.rfactor(lane, factor_axis=len(sch.get_loops(block)) - 2)
    sch.compute_at(block, token_loop)
    sch.compute_at(partial, token_loop)
    # compute_at made the loops in the order of the block's iters: the lane axis, then the steps.
    lane_loop, steps = sch.get_loops(partial)[-2:]
    sch.reorder(steps, lane_loop)
    sch.vectorize(lane_loop)
    init = sch.decompose_reduction(partial, steps)
    sch.vectorize(sch.get_loops(init)[-1])


class LayerNormGeneralCpu(CpuHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        blocks = find_norm(sch)
        if blocks is None:
            return False
        sums, squares, out = blocks
        cpu = cpu_target(target)
        *token_loops, channel = sch.get_loops(out)
        lanes = vector_lanes(int(sch.get(channel).extent), cpu.lanes)
        token = sch.fuse(*token_loops)
        sch.parallel(token)
        if lanes > 1:
            _, out_lanes = sch.split(channel, [None, lanes])
            sch.vectorize(out_lanes)
            _vector_sum(sch, squares, lanes, token)
            _vector_sum(sch, sums, lanes, token)
        else:
            sch.compute_at(squares, token)
            sch.compute_at(sums, token)
        if tunable:
            mark_root_untouchable(sch)
        return True


class ReductionCpu(CpuHandRule):
    """Other reductions (the head's mean over the map and its LayerNorm): each block parallel
    over its outermost spatial loop. They are small (one token of a few hundred channels)."""

    name = "cpu_reduction"

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not any(iv.iter_type == 2 for b in blocks for iv in sch.get(b).iter_vars):
            return False
        cpu = cpu_target(target)
        for block in blocks:
            loops = sch.get_loops(block)
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]  # one loop per iterator
            leading = loops[:next(i for i, kind in enumerate(kinds + [2]) if kind != 0)]
            if leading and len(leading) < len(loops):  # a reduction, parallel over its outer loops
                outer = sch.fuse(*leading) if len(leading) > 1 else leading[0]
                if int(sch.get(outer).extent) >= cpu.cores:
                    sch.parallel(outer)
        return True
