"""Element-wise and data-movement kernels on CUDA: the GELU gates, residual scales, channel
splits, reshapes, and the transposes around our channels-first oversized op.

Every intermediate block is inlined into the blocks that write the kernel's outputs, so a
kernel makes one pass over memory. Plain element-wise outputs: one element per thread,
consecutive threads on consecutive elements (coalesced). A transpose goes through shared
memory in square tiles (32 x 32 where the map is that wide): the block reads its tile along the input's contiguous axis and
writes it along the output's, so both sides are coalesced (the tile's rows are padded by
one float against bank conflicts).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import CudaHandRule, knob, mark_root_untouchable
from .patterns import all_spatial, inline_into_outputs, transposed_axis

SCHEDULE_RULE = "cuda_elementwise"
THREAD_CHOICES = [128, 256, 512, 1024]
DEFAULT_THREADS = 256
TILES = (32, 16, 8)  # a transpose's tile edge: one warp wide where the axes are that long
TILE_ROWS = 8  # threads per tile column: each thread moves tile / TILE_ROWS elements


def one_thread_per_element(sch: s_tir.Schedule, block, threads) -> None:
    fused = sch.fuse(*sch.get_loops(block))
    blocks, thread = sch.split(fused, [None, threads])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")


def tiled_transpose(sch: s_tir.Schedule, block, axis: int) -> bool:
    """Tile the output loop `axis` (the input's contiguous axis) and the innermost output loop
    in squares, staging each input tile in shared memory. False when either is shorter than
    the smallest tile (then the plain schedule is as good)."""
    loops = sch.get_loops(block)
    source, dest = loops[axis], loops[-1]
    shortest = min(int(sch.get(source).extent), int(sch.get(dest).extent))
    fitting = [t for t in TILES if t <= shortest]
    if not fitting:
        return False
    tile = fitting[0]
    others = [loop for loop in loops if not loop.same_as(source) and not loop.same_as(dest)]
    s_outer, s_inner = sch.split(source, [None, tile])
    d_outer, d_inner = sch.split(dest, [None, tile])
    sch.reorder(*others, s_outer, d_outer, s_inner, d_inner)
    tile_loop = sch.fuse(*others, s_outer, d_outer)
    sch.bind(tile_loop, "blockIdx.x")
    staged = sch.cache_read(block, 0, "shared")
    sch.compute_at(staged, tile_loop, preserve_unit_loops=True)
    # the copy walks the input tile in the input's order: its last loop is the contiguous axis
    copy = sch.fuse(*sch.get_loops(staged)[-len(loops):])
    _, rows, lanes = sch.split(copy, [None, TILE_ROWS, tile])
    sch.bind(rows, "threadIdx.y")
    sch.bind(lanes, "threadIdx.x")
    sch.storage_align(staged, 0, axis=-2, factor=tile, offset=1)
    _, rows, lanes = sch.split(sch.fuse(s_inner, d_inner), [None, TILE_ROWS, tile])
    sch.bind(rows, "threadIdx.y")
    sch.bind(lanes, "threadIdx.x")
    return True


class ElementwiseCuda(CudaHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or not all_spatial(sch, blocks):
            return False
        threads = knob(sch, THREAD_CHOICES, DEFAULT_THREADS, tunable)
        for block in inline_into_outputs(sch):
            axis = transposed_axis(sch, block)
            if axis is None or not tiled_transpose(sch, block, axis):
                one_thread_per_element(sch, block, threads)
        if tunable:
            mark_root_untouchable(sch)
        return True
