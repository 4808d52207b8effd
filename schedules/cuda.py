"""CUDA schedule of the oversized op.

One thread block per (image, channel, tile of `rows` output rows); one thread per output
element of that tile (threads over columns and the tile's rows). Everything a block reads
more than once is staged in shared memory by all its threads together: the channel's input
map and the kernel taps (or Toeplitz rows), and, in the fused op, the H pass's tile of rows
that the W pass consumes. Accumulators live in registers. The Toeplitz form is thereby a
tiled batched GEMM with its B matrix in shared memory.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import OversizedRule, divisors, knob, mark_root_untouchable, oversized_blocks

MAX_THREADS = 1024
DEFAULT_THREADS = 256  # enough warps per block to hide shared-memory latency
BLOCK_LOOPS = 2  # (image x channel, row tile): the loops bound to blockIdx


def row_tile_candidates(height: int, width: int) -> list[int]:
    return [d for d in divisors(height) if d * width <= MAX_THREADS] or [1]


def default_row_tile(height: int, width: int) -> int:
    fitting = [d for d in row_tile_candidates(height, width) if d * width <= DEFAULT_THREADS]
    return max(fitting) if fitting else 1


def _stage_in_shared(sch: s_tir.Schedule, block, at_loop, rows, width: int, skip: set[str]) -> None:
    """Cache every buffer `block` reads (except `skip`) in shared memory under `at_loop`,
    loaded cooperatively by the block's rows x width threads. `rows` may be a sampled knob,
    so the thread loop is split by (rows, width) and fused, never by a baked-in product."""
    reads = [str(region.source.name) for region in sch.get(block).reads]
    for index, name in enumerate(reads):
        if name in skip:
            continue
        cached = sch.cache_read(block, index, "shared")
        sch.compute_at(cached, at_loop)
        fused = sch.fuse(*sch.get_loops(cached)[BLOCK_LOOPS:])
        _, thread_rows, thread_cols = sch.split(fused, [None, rows, width])
        sch.bind(sch.fuse(thread_rows, thread_cols), "threadIdx.x")


def _one_output_per_thread(sch: s_tir.Schedule, block, spatial_loops):
    thread = sch.fuse(*spatial_loops) if len(spatial_loops) > 1 else spatial_loops[0]
    sch.bind(thread, "threadIdx.x")
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, thread)
    return thread


def schedule_cuda(sch: s_tir.Schedule, tunable: bool) -> bool:
    blocks = oversized_blocks(sch)
    if blocks is None:
        return False
    h_block, w_block, output = blocks
    fused = h_block is not None and w_block is not None
    n, c, i, j, r = sch.get_loops(output)
    height, width = int(sch.get(i).extent), int(sch.get(j).extent)
    # One-row tiles are left out of the search: compute_at drops the extent-1 loop, and a trace
    # whose loop count depends on a sampled value cannot be replayed with another value.
    candidates = [r for r in row_tile_candidates(height, width) if r > 1] or [1]
    rows = knob(sch, candidates, default_row_tile(height, width), tunable)
    channel = sch.fuse(n, c)
    row_tile, row = sch.split(i, [None, rows])
    sch.bind(channel, "blockIdx.x")
    sch.bind(row_tile, "blockIdx.y")
    intermediate = {str(sch.get(h_block).writes[0].source.name)} if fused else set()
    _stage_in_shared(sch, output, row_tile, rows, width, skip=intermediate)
    _one_output_per_thread(sch, output, [row, j])
    if fused:
        sch.compute_at(h_block, row_tile)
        sch.set_scope(h_block, 0, "shared")
        _stage_in_shared(sch, h_block, row_tile, rows, width, skip=set())
        # The H pass's spatial loops under the row tile: (rows, columns), or only columns when
        # the tile is one row (compute_at drops a loop of extent 1); the last loop reduces.
        loops = sch.get_loops(h_block)
        below = next(k for k, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(row_tile))) + 1
        _one_output_per_thread(sch, h_block, loops[below:-1])
    if tunable:
        mark_root_untouchable(sch)
    return True


class OversizedConvCuda(OversizedRule):
    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "cuda"

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cuda(sch, tunable)
