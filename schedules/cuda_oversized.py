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

Large maps: a block of the fused op must hold a channel's whole input map (every output row
sums over all input rows). From about 110x110 (inputs of 448 and up) it cannot, and
`cuda_passes` makes the rewrite emit each pass as its own op, with the H pass's result in
global memory between them: the H pass alone needs only a strip of columns per block, the W
pass alone a strip of rows. The Toeplitz form also stages its HxH / WxW matrices, so it runs
out of shared memory earlier (from 64x64 fused) and has no split form for large maps.
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from parcnet_tvm.errors import ParcnetError

from .common import (
    CudaHandRule,
    divisors,
    knob,
    largest_divisor,
    mark_root_untouchable,
    oversized_blocks,
)

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

def toeplitz_shared_bytes(height: int, rows: int, width: int, passes: str) -> int:
    """Shared memory of one block of the Toeplitz schedule, per channel: for the H pass the
    input map and the tile's rows of Th, for the W pass its input rows (the H pass's, when
    fused) and all of Tw^T."""
    floats = 0
    if "h" in passes:
        floats += height * width + rows * height
    if "w" in passes:
        floats += rows * width + width * width
    return 4 * floats


def row_tile_candidates(height: int, width: int, passes: str) -> list[int]:
    """Rows per block (one output per thread) that fit the thread and shared-memory limits;
    empty when none does."""
    return [d for d in divisors(height)
            if d * width <= MAX_THREADS and toeplitz_shared_bytes(height, d, width, passes) <= SHARED_BYTES]


def default_row_tile(candidates: list[int], width: int) -> int:
    return max([d for d in candidates if d * width <= DEFAULT_THREADS] or candidates[:1])


def _one_output_per_thread(sch: s_tir.Schedule, block, spatial_loops):
    thread = sch.fuse(*spatial_loops) if len(spatial_loops) > 1 else spatial_loops[0]
    sch.bind(thread, "threadIdx.x")
    accumulate_in_registers(sch, block, thread)


def _schedule_toeplitz(sch: s_tir.Schedule, h_block, w_block, output, tunable: bool) -> bool:
    fused = h_block is not None and w_block is not None
    n, c, i, j, r = sch.get_loops(output)
    height, width = int(sch.get(i).extent), int(sch.get(j).extent)
    candidates = row_tile_candidates(height, width, _passes(h_block, w_block))
    if not candidates:
        return False  # too large for shared memory: cuda_passes keeps such ops out of our builds
    rows = knob(sch, candidates, default_row_tile(candidates, width), tunable)
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
    return True


# ----------------------------------------------------------------- direct: register tiles

def direct_tile(rows: int, width: int) -> int:
    """Outputs per thread of the fused op: the largest common divisor of the block's rows and
    the width up to MAX_TILE, so both passes split evenly and have the same thread count."""
    return largest_divisor(math.gcd(rows, width), MAX_TILE)


def _padded(width: int) -> int:
    return width | 1  # an odd row stride: a column's elements fall in distinct banks


def largest_fitting(sizes: list[int], shared_bytes, threads) -> int | None:
    """The largest tile size whose block stays within the shared-memory and thread limits."""
    fitting = [d for d in sizes if shared_bytes(d) <= SHARED_BYTES and threads(d) <= MAX_THREADS]
    return max(fitting) if fitting else None


# Shared memory of one channel in a block of the direct schedule, in bytes: what each pass
# stages (its input and the taps it uses) and, when fused, the H pass's rows for the W pass.
def fused_shared_bytes(height: int, rows: int, width: int) -> int:
    return 4 * (height * width + (height + rows - 1) + rows * _padded(width) + (2 * width - 1))


def h_shared_bytes(height: int, columns: int) -> int:
    return 4 * (height * columns + (2 * height - 1))


def w_shared_bytes(rows: int, width: int) -> int:
    return 4 * (rows * _padded(width) + (2 * width - 1))


# Threads per channel: a block's outputs of one channel over the outputs each thread keeps.
def fused_threads(rows: int, width: int) -> int:
    return rows * width // direct_tile(rows, width)


def h_threads(height: int, columns: int) -> int:
    return height // largest_divisor(height, MAX_TILE) * columns


def w_threads(rows: int, width: int) -> int:
    return rows * width // largest_divisor(width, MAX_TILE)


def direct_fused_rows(height: int, width: int) -> int | None:
    """Output rows per block of the fused op: whole maps unless a channel's staging or the
    thread count would overflow; None when no row tile fits (`cuda_passes` then splits)."""
    return largest_fitting(divisors(height), lambda rows: fused_shared_bytes(height, rows, width),
                           lambda rows: fused_threads(rows, width))


def direct_w_rows(height: int, width: int) -> int | None:
    """Rows per block of the W pass alone (each row is independent of the others)."""
    return largest_fitting(divisors(height), lambda rows: w_shared_bytes(rows, width),
                           lambda rows: w_threads(rows, width))


def direct_h_columns(height: int, width: int) -> int | None:
    """Columns per block of the H pass alone (each column is independent of the others)."""
    return largest_fitting(divisors(width), lambda columns: h_shared_bytes(height, columns),
                           lambda columns: h_threads(height, columns))


def cuda_passes(algo: str, height: int, width: int) -> tuple[str, ...]:
    """How our op runs on CUDA over HxW maps: ('hw',), one op for both passes, where a block
    can stage what the fused schedule needs, else ('h', 'w'), one op per pass."""
    if algo == "direct" and direct_fused_rows(height, width):
        return ("hw",)
    if algo == "direct" and direct_h_columns(height, width) and direct_w_rows(height, width):
        return ("h", "w")
    if algo == "toeplitz" and row_tile_candidates(height, width, "hw"):
        return ("hw",)
    if algo == "toeplitz" and row_tile_candidates(height, width, "h") and row_tile_candidates(height, width, "w"):
        return ("h", "w")
    raise ParcnetError(f"the {algo} oversized conv does not fit a CUDA thread block's shared memory for "
                       f"{height}x{width} maps: use --oversized-algo direct (or auto), or a smaller input")


def split_channel_groups(sch: s_tir.Schedule, c, threads_per_channel: int, shared_per_channel: int, tunable: bool):
    """Split the channel loop into (blocks, channels per block); the latter a knob."""
    channels = int(sch.get(c).extent)
    candidates = channel_group_candidates(channels, threads_per_channel, shared_per_channel)
    group = knob(sch, candidates, default_channel_group(candidates, threads_per_channel), tunable)
    return (*sch.split(c, [None, group]), group)


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


def _blocks_over(sch: s_tir.Schedule, n, c_out, c_in, rows, columns, along: str, size: int):
    """Bind (image x channel group) to blockIdx.x and strips of `size` rows or columns
    (`along`) to blockIdx.y; returns (the strip loop, rows, columns inside the strip)."""
    if along == "rows":
        strip, rows = sch.split(rows, [None, size])
    else:
        strip, columns = sch.split(columns, [None, size])
    sch.reorder(c_out, strip, c_in, rows, columns)
    sch.bind(sch.fuse(n, c_out), "blockIdx.x")
    sch.bind(strip, "blockIdx.y")
    return strip, rows, columns


def _direct_one_pass(sch: s_tir.Schedule, block, h_pass: bool, tunable: bool) -> bool:
    """One pass alone: a block holds strips of whole columns for the H pass (it sums down
    columns only), of whole rows for the W pass (staged with an odd row stride, since its
    threads read them down columns)."""
    n, c, i, j, r = sch.get_loops(block)
    height, width = int(sch.get(i).extent), int(sch.get(j).extent)
    size = direct_h_columns(height, width) if h_pass else direct_w_rows(height, width)
    if size is None:
        return False
    tile = largest_divisor(height if h_pass else width, MAX_TILE)
    threads_per_channel = h_threads(height, size) if h_pass else w_threads(size, width)
    shared_per_channel = h_shared_bytes(height, size) if h_pass else w_shared_bytes(size, width)
    c_out, c_in, group = split_channel_groups(sch, c, threads_per_channel, shared_per_channel, tunable)
    strip, i, j = _blocks_over(sch, n, c_out, c_in, i, j, "columns" if h_pass else "rows", size)
    stage_in_shared(sch, block, strip, [group, threads_per_channel], skip=set(), pad_rows=not h_pass)
    _register_tile(sch, block, c_in, i, j, r, "rows" if h_pass else "cols", tile)
    return True


def _direct_fused(sch: s_tir.Schedule, h_block, output, tunable: bool) -> bool:
    n, c, i, j, r = sch.get_loops(output)
    height, width = int(sch.get(i).extent), int(sch.get(j).extent)
    rows = direct_fused_rows(height, width)
    if rows is None:
        return False  # too large for shared memory: cuda_passes splits such ops in our builds
    tile = direct_tile(rows, width)
    threads_per_channel = fused_threads(rows, width)
    shared_per_channel = fused_shared_bytes(height, rows, width)
    c_out, c_in, group = split_channel_groups(sch, c, threads_per_channel, shared_per_channel, tunable)
    row_tile, i, j = _blocks_over(sch, n, c_out, c_in, i, j, "rows", rows)
    thread_factors = [group, threads_per_channel]
    intermediate = {str(sch.get(h_block).writes[0].source.name)}
    stage_in_shared(sch, output, row_tile, thread_factors, skip=intermediate)
    _register_tile(sch, output, c_in, i, j, r, "cols", tile)
    sch.compute_at(h_block, row_tile, preserve_unit_loops=True)
    sch.set_scope(h_block, 0, "shared")
    stage_in_shared(sch, h_block, row_tile, thread_factors, skip=set())
    h_n, h_c, h_rows, h_cols, h_r = sch.get_loops(h_block)[BLOCK_LOOPS:]
    write_back = _register_tile(sch, h_block, sch.fuse(h_n, h_c), h_rows, h_cols, h_r, "rows", tile)
    # The W pass reads these rows column-wise: an odd row stride spreads them over the banks.
    sch.storage_align(write_back, 0, axis=2, factor=2, offset=1)
    return True


def _passes(h_block, w_block) -> str:
    return ("h" if h_block is not None else "") + ("w" if w_block is not None else "")


def schedule_cuda(sch: s_tir.Schedule, tunable: bool) -> bool:
    blocks = oversized_blocks(sch)
    if blocks is None:
        return False
    h_block, w_block, output = blocks
    if _is_toeplitz(sch, output):
        done = _schedule_toeplitz(sch, h_block, w_block, output, tunable)
    elif h_block is not None and w_block is not None:
        done = _direct_fused(sch, h_block, output, tunable)
    else:
        done = _direct_one_pass(sch, output, h_pass=w_block is None, tunable=tunable)
    if done and tunable:
        mark_root_untouchable(sch)
    return done


class OversizedConvCuda(CudaHandRule):
    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_cuda(sch, tunable)
