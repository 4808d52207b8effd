"""CUDA schedules of the oversized op, one per algorithm.

Toeplitz (`_schedule_toeplitz`): a tiled batched GEMM. One thread block per (image, channel,
tile of `rows` output rows), one thread per output element; everything a block reads more
than once (the channel's map, the Toeplitz rows, and in the fused op the H pass's rows that
the W pass consumes) is staged in shared memory by all its threads together. Every
multiply-add reads both operands from shared memory: measured on an H200 (bench_op, batch 32)
it ran at ~6 TFLOP/s, the bound that two shared loads per FMA put on it.

Direct (`_schedule_direct`): register tiles along the sliding window. Each thread accumulates
`tile` outputs of one line in registers: `tile` rows of one column in the H pass, `tile`
columns of one row in the W pass. Output k of the line needs tap (r - k) at step r, so from
one step to the next all but one of the taps a thread holds are reused; with the reduction
loop unrolled the compiler keeps them in registers, and a step costs one new tap and one
input value for `tile` FMAs (0.27 shared loads per FMA at tile 8, against 2 above).
Consecutive threads take consecutive lines across the tile direction, so their shared reads
fall in distinct banks; the H pass's output rows are padded to an odd stride for the W
pass's column-wise reads. A block holds whole maps of `channels` channels (fewer rows when
shared memory would overflow), so each input is read from global memory once.
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from .common import HandRule, divisors, knob, largest_divisor, mark_root_untouchable, oversized_blocks

MAX_THREADS = 1024
DEFAULT_THREADS = 256  # enough warps per block to hide shared-memory latency
SHARED_BYTES = 48 * 1024  # static shared memory a block may declare
MAX_TILE = 8  # outputs per thread in the direct schedule: accumulators + taps stay in registers
BLOCK_LOOPS = 2  # the loops bound to blockIdx (x: image x channel group, y: row tile)


# ----------------------------------------------------------------- shared by both schedules

def spread_over_threads(sch: s_tir.Schedule, block, thread_factors) -> None:
    """Share `block`'s loops below the block loops (a copy into shared memory) among all the
    block's threads: fused, split by `thread_factors` (whose product is the thread count; some
    may be sampled knobs), and those loops fused and bound to threadIdx.x."""
    fused = sch.fuse(*sch.get_loops(block)[BLOCK_LOOPS:])
    _, *threads = sch.split(fused, [None, *thread_factors])
    sch.bind(sch.fuse(*threads), "threadIdx.x")


def stage_in_shared(sch: s_tir.Schedule, block, at_loop, thread_factors, skip: set[str],
                    pad_rows: bool = False) -> None:
    """Cache every buffer `block` reads (except `skip`) in shared memory under `at_loop`,
    loaded cooperatively by the block's threads (`spread_over_threads`). `pad_rows` pads the
    rows of 4-D caches to an odd stride (for readers going down columns)."""
    reads = [str(region.source.name) for region in sch.get(block).reads]
    for index, name in enumerate(reads):
        if name in skip:
            continue
        cached = sch.cache_read(block, index, "shared")
        sch.compute_at(cached, at_loop, preserve_unit_loops=True)
        if pad_rows and len(sch.get(cached).writes[0].source.shape) == 4:
            sch.storage_align(cached, 0, axis=2, factor=2, offset=1)
        spread_over_threads(sch, cached, thread_factors)


def accumulate_in_registers(sch: s_tir.Schedule, block, thread):
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, thread, preserve_unit_loops=True)
    return accumulator


def _is_toeplitz(sch: s_tir.Schedule, block) -> bool:
    # Toeplitz matrices are (C, H, H) / (C, W, W); direct taps are (C, 2H-1) vectors.
    return any(len(region.source.shape) == 3 for region in sch.get(block).reads)


# ----------------------------------------------------------------- toeplitz: shared-memory GEMM

def row_tile_candidates(height: int, width: int) -> list[int]:
    return [d for d in divisors(height) if d * width <= MAX_THREADS] or [1]


def default_row_tile(height: int, width: int) -> int:
    fitting = [d for d in row_tile_candidates(height, width) if d * width <= DEFAULT_THREADS]
    return max(fitting) if fitting else 1


def _one_output_per_thread(sch: s_tir.Schedule, block, spatial_loops):
    thread = sch.fuse(*spatial_loops) if len(spatial_loops) > 1 else spatial_loops[0]
    sch.bind(thread, "threadIdx.x")
    accumulate_in_registers(sch, block, thread)


def _schedule_toeplitz(sch: s_tir.Schedule, h_block, w_block, output, tunable: bool) -> None:
    fused = h_block is not None and w_block is not None
    n, c, i, j, r = sch.get_loops(output)
    height, width = int(sch.get(i).extent), int(sch.get(j).extent)
    candidates = row_tile_candidates(height, width)
    rows = knob(sch, candidates, default_row_tile(height, width), tunable)
    channel = sch.fuse(n, c)
    row_tile, row = sch.split(i, [None, rows])
    sch.bind(channel, "blockIdx.x")
    sch.bind(row_tile, "blockIdx.y")
    intermediate = {str(sch.get(h_block).writes[0].source.name)} if fused else set()
    stage_in_shared(sch, output, row_tile, [rows, width], skip=intermediate)
    _one_output_per_thread(sch, output, [row, j])
    if fused:
        sch.compute_at(h_block, row_tile, preserve_unit_loops=True)
        sch.set_scope(h_block, 0, "shared")
        stage_in_shared(sch, h_block, row_tile, [rows, width], skip=set())
        _, _, h_rows, h_cols, _ = sch.get_loops(h_block)[BLOCK_LOOPS:]  # (n, c, rows, columns, r)
        _one_output_per_thread(sch, h_block, [h_rows, h_cols])


# ----------------------------------------------------------------- direct: register tiles

def direct_tile(rows: int, width: int) -> int:
    """Outputs per thread: the largest common divisor of the block's rows and the width up to
    MAX_TILE, so both passes split evenly and have the same thread count."""
    return largest_divisor(math.gcd(rows, width), MAX_TILE)


def _padded(width: int) -> int:
    return width | 1  # an odd row stride: a column's elements fall in distinct banks


def direct_shared_bytes(channels: int, height: int, rows: int, width: int, passes: str) -> int:
    """Shared memory of one block of the direct schedule (floats staged per channel: the input
    map, the H pass's rows when fused, the taps)."""
    per_channel = 0
    if "h" in passes:
        per_channel += height * width + (height + rows - 1)
    if "w" in passes:
        per_channel += rows * _padded(width) + (2 * width - 1)
    return 4 * channels * per_channel


def direct_block_rows(height: int, width: int, passes: str) -> int:
    """Whole maps per block, unless one channel's staging would overflow shared memory."""
    fitting = [d for d in divisors(height) if direct_shared_bytes(1, height, d, width, passes) <= SHARED_BYTES]
    return max(fitting) if fitting else 1


def channel_group_candidates(channels: int, threads_per_channel: int, shared_per_channel: int) -> list[int]:
    fitting = [d for d in divisors(channels)
               if d * threads_per_channel <= MAX_THREADS and d * shared_per_channel <= SHARED_BYTES]
    return fitting or [1]


def default_channel_group(candidates: list[int], threads_per_channel: int) -> int:
    """Small maps get several channels per block, up to DEFAULT_THREADS threads."""
    return max([d for d in candidates if d * threads_per_channel <= DEFAULT_THREADS] or [1])


def _register_tile(sch: s_tir.Schedule, block, channel, rows, cols, r, along: str, tile: int):
    """Split one pass's loops (channel group, rows, columns, reduction) below the block loops
    into threads x a register tile of `tile` outputs along `along` ('rows' for the H pass,
    'cols' for the W pass); the reduction and the tile are unrolled inside each thread."""
    if along == "rows":
        group, lane = sch.split(rows, [None, tile])
        across = cols
    else:
        group, lane = sch.split(cols, [None, tile])
        across = rows
    sch.reorder(channel, group, across, r, lane)
    thread = sch.fuse(channel, group, across)
    sch.bind(thread, "threadIdx.x")
    sch.unroll(r)
    sch.unroll(lane)
    return accumulate_in_registers(sch, block, thread)


def _schedule_direct(sch: s_tir.Schedule, h_block, w_block, output, tunable: bool) -> None:
    fused = h_block is not None and w_block is not None
    passes = "hw" if fused else ("h" if w_block is None else "w")
    n, c, i, j, r = sch.get_loops(output)
    channels, height, width = (int(sch.get(loop).extent) for loop in (c, i, j))
    rows = direct_block_rows(height, width, passes)
    tile = direct_tile(rows, width)
    threads_per_channel = rows * width // tile
    candidates = channel_group_candidates(channels, threads_per_channel,
                                          direct_shared_bytes(1, height, rows, width, passes))
    group = knob(sch, candidates, default_channel_group(candidates, threads_per_channel), tunable)
    c_out, c_in = sch.split(c, [None, group])
    row_tile, row = sch.split(i, [None, rows])
    sch.reorder(c_out, row_tile, c_in, row)
    sch.bind(sch.fuse(n, c_out), "blockIdx.x")
    sch.bind(row_tile, "blockIdx.y")
    thread_factors = [group, threads_per_channel]
    intermediate = {str(sch.get(h_block).writes[0].source.name)} if fused else set()
    stage_in_shared(sch, output, row_tile, thread_factors, skip=intermediate, pad_rows=passes == "w")
    _register_tile(sch, output, c_in, row, j, r, "rows" if passes == "h" else "cols", tile)
    if fused:
        sch.compute_at(h_block, row_tile, preserve_unit_loops=True)
        sch.set_scope(h_block, 0, "shared")
        stage_in_shared(sch, h_block, row_tile, thread_factors, skip=set())
        h_n, h_c, h_rows, h_cols, h_r = sch.get_loops(h_block)[BLOCK_LOOPS:]
        write_back = _register_tile(sch, h_block, sch.fuse(h_n, h_c), h_rows, h_cols, h_r, "rows", tile)
        # The W pass reads these rows column-wise: an odd row stride spreads them over the banks.
        sch.storage_align(write_back, 0, axis=2, factor=2, offset=1)


def schedule_cuda(sch: s_tir.Schedule, tunable: bool) -> bool:
    blocks = oversized_blocks(sch)
    if blocks is None:
        return False
    h_block, w_block, output = blocks
    if _is_toeplitz(sch, output):
        _schedule_toeplitz(sch, h_block, w_block, output, tunable)
    else:
        _schedule_direct(sch, h_block, w_block, output, tunable)
    if tunable:
        mark_root_untouchable(sch)
    return True


class OversizedConvCuda(HandRule):
    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "cuda"

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cuda(sch, tunable)
