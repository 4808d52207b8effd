"""Kernels of elementwise and data-movement ops on CPUs: the GELU gates (split, fast-erf GELU,
multiply), the residual scales, the channel splits, reshapes and transposes.

Every intermediate block is inlined into the blocks that write the kernel's outputs, so a
kernel makes one pass over memory; each output block runs in parallel chunks of whole
vectors. A transpose (around our channels-first oversized op) is walked in square tiles of
`lanes x lanes`: its reads and writes both stay within a few cache lines per tile.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .cpu_target import CpuHandRule, cpu_target
from .cpu_tiling import parallel_elementwise, vector_lanes
from .patterns import all_spatial, inline_into_outputs, transposed_axis

SCHEDULE_RULE = "cpu_elementwise"


class ElementwiseCpu(CpuHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or not all_spatial(sch, blocks):
            return False
        cpu = cpu_target(target)
        for block in inline_into_outputs(sch):
            source_axis = transposed_axis(sch, block)
            if source_axis is None:
                parallel_elementwise(sch, block, cpu.lanes)
            else:
                _tiled_transpose(sch, block, source_axis, cpu.lanes)
        return True


def _tiled_transpose(sch: s_tir.Schedule, block, axis: int, lanes: int) -> None:
    loops = sch.get_loops(block)
    source, target_loop = loops[axis], loops[-1]
    source_lanes = vector_lanes(int(sch.get(source).extent), lanes)
    target_lanes = vector_lanes(int(sch.get(target_loop).extent), lanes)
    source_outer, source_inner = sch.split(source, [None, source_lanes])
    target_outer, target_inner = sch.split(target_loop, [None, target_lanes])
    others = [loop for i, loop in enumerate(loops[:-1]) if i != axis]
    sch.reorder(*others, source_outer, target_outer, source_inner, target_inner)
    sch.parallel(sch.fuse(*others, source_outer))
    sch.unroll(source_inner)
    sch.vectorize(target_inner)
