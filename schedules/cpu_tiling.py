"""Multi-level tiling of the oversized op on CPUs (x86 and ARM share it; limits differ).

Each pass is a GEMM-shaped nest (n, c, i, j, r). We parallelise over (n, c), tile rows i
and columns j into a register block of `rows x cols` accumulators (cols vectorised, rows
unrolled), loop the reduction r around that block, and cache-write the accumulators so
they live in registers. In the fused op the H pass is computed per channel right before
the W pass that consumes it, so its H x W output stays in L1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir

from .common import divisors, knob, mark_root_untouchable, oversized_blocks
from .patterns import all_spatial


@dataclass(frozen=True)
class CpuLimits:
    lanes: int                # fp32 lanes per vector register
    accumulator_vectors: int  # vector registers we let the accumulators take
    max_col_vectors: int      # widest column tile, in vectors


def padded_width(width: int, limits: CpuLimits) -> int:
    """Columns each pass computes: W rounded up to whole vectors when that costs <= 15% more
    multiply-adds. Partial vectors (e.g. <14 x float> for W = 56) become split loads and
    shuffles in LLVM, which measured ~1.7x slower than full-vector tiles with a padded edge."""
    for lanes in (limits.lanes, limits.lanes // 2, limits.lanes // 4):
        if lanes >= 2:
            padded = -(-width // lanes) * lanes
            if padded * 100 <= width * 115:
                return padded
    return width


def vector_width(width: int, limits: CpuLimits) -> int:
    """Lanes per column vector: the widest divisor of W that fits one register.

    Wider vector types (<28 x float>, <56 x float>) measured 10-25x slower here: LLVM spills
    them; several unrolled register-wide vectors do not.
    """
    return max(d for d in divisors(width) if d <= limits.lanes)


def default_tile(height: int, width: int, limits: CpuLimits) -> tuple[int, int]:
    """(rows, column vectors): widest column tile within max_col_vectors, then as many rows
    as the accumulator budget allows."""
    vectors_per_row = width // vector_width(width, limits)
    col_vectors = max(d for d in divisors(vectors_per_row) if d <= limits.max_col_vectors)
    budget = max(limits.accumulator_vectors, col_vectors)
    rows = max(d for d in divisors(height) if d * col_vectors <= budget)
    return rows, col_vectors


def tile_candidates(height: int, width: int, limits: CpuLimits) -> tuple[list[int], list[int]]:
    """The tunable (rows, column vectors) choices.

    Tiles of 1 are left out where a larger one exists: TIR drops unit loops from the blocks
    that cache_write / decompose_reduction create, so a sampled 1 would change how many loops
    a replayed trace finds, and MetaSchedule rejects such a trace ("old_outputs.size() ==
    new_outputs.size()")."""
    vectors_per_row = width // vector_width(width, limits)
    col_vectors = [d for d in divisors(vectors_per_row) if d <= limits.max_col_vectors]
    rows = [d for d in divisors(height) if d <= 2 * limits.accumulator_vectors]
    return without_unit(rows), without_unit(col_vectors)


def _tile_pass(sch: s_tir.Schedule, block, loops, limits: CpuLimits, tunable: bool) -> None:
    """Register-tile one pass whose remaining loops are (i, j, r)."""
    i, j, r = loops
    height, width = (int(sch.get(loop).extent) for loop in (i, j))
    lanes = vector_width(width, limits)
    default_rows, default_vectors = default_tile(height, width, limits)
    row_choices, vector_choices = tile_candidates(height, width, limits)
    rows = knob(sch, row_choices, default_rows, tunable)
    vectors = knob(sch, vector_choices, default_vectors, tunable)
    i_outer, i_inner = sch.split(i, [None, rows])
    j_outer, j_vectors, j_lanes = sch.split(j, [None, vectors, lanes])
    sch.reorder(i_outer, j_outer, r, i_inner, j_vectors, j_lanes)
    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, j_outer)
    # Vectorise while the block still has its init: once decomposed, the update block is
    # neither complete nor a reduction, and vectorize refuses it.
    sch.unroll(i_inner)
    sch.unroll(j_vectors)
    sch.vectorize(j_lanes)
    init = sch.decompose_reduction(block, r)
    for tile_loops in (sch.get_loops(accumulators)[-2:], sch.get_loops(init)[-3:]):
        *outer, lane_loop = tile_loops
        for loop in outer:
            sch.unroll(loop)
    write_rows, write_cols = sch.get_loops(accumulators)[-2:]
    _, write_lanes = sch.split(write_cols, [None, lanes])
    sch.vectorize(write_lanes)
    sch.vectorize(sch.get_loops(init)[-1])


def _compute_pass(sch: s_tir.Schedule, block, limits: CpuLimits, tunable: bool):
    """Parallelise one pass over (image, channel), register-tile it, and build the padded
    copies it reads (padded input columns or tap columns) per channel, right before use."""
    n, c, *rest = sch.get_loops(block)
    channel_loop = sch.fuse(n, c)
    sch.parallel(channel_loop)
    for producer in sch.get_producers(block):
        if sch.get(producer).name_hint.endswith("_pad"):  # made by pad_einsum
            sch.compute_at(producer, channel_loop)
    _tile_pass(sch, block, rest, limits, tunable)
    return channel_loop


def _is_einsum(sch: s_tir.Schedule, block) -> bool:
    """Whether every tap read is a plain index (Toeplitz), which pad_einsum needs."""
    return all(str(dim.min).isidentifier() for region in sch.get(block).reads for dim in region.region)


def schedule_cpu(sch: s_tir.Schedule, limits: CpuLimits, tunable: bool) -> bool:
    """Schedule our op in `sch` in place; False when `sch` holds no oversized op."""
    blocks = oversized_blocks(sch)
    if blocks is None:
        return False
    h_block, w_block, output = blocks
    width = int(sch.get(sch.get_loops(output)[3]).extent)
    padded = padded_width(width, limits)
    passes = [b for b in (h_block, w_block) if b is not None]
    crops = [None] * len(passes)
    if padded != width and _is_einsum(sch, passes[0]):  # the Toeplitz form; direct indexes taps
        for index, block in enumerate(passes):
            # Compute `padded` columns into a padded buffer; a crop block copies W of them out.
            sch.pad_einsum(block, [1, 1, 1, padded, 1])
            crops[index] = sch.get_consumers(block)[0]
        if len(passes) == 2:  # the W pass reads the H pass's padded buffer directly
            sch.compute_inline(crops[0])
            crops[0] = None
    for block, crop in zip(passes, crops):
        channel_loop = _compute_pass(sch, block, limits, tunable)
        if crop is not None:
            sch.reverse_compute_at(crop, channel_loop)
    if tunable:
        mark_root_untouchable(sch)
    return True


# ---------------------------------------------------------------- register tiles of other ops
# The GEMMs, the stem/downsampling convs and the 7x7 depth-wise convs share one shape on a
# channels-last CPU graph: spatial loops (..., rows, cols) with `cols` the contiguous output
# channel, and reduction loops that read one input scalar or vector per step. Each is tiled
# the same way: `rows x vectors` accumulators (vectors of `lanes` channels) stay in registers
# while the reduction loops run around them, and the ops fused after it (bias, residual add,
# scale, gate) are applied to the accumulators on their single write.


def vector_lanes(extent: int, lanes: int) -> int:
    """The widest vector (lanes, lanes/2, ...; at least 2) dividing `extent`; 1 if none."""
    while lanes >= 2:
        if extent % lanes == 0:
            return lanes
        lanes //= 2
    return 1


def without_unit(choices: list[int]) -> list[int]:
    """Tunable tile choices without 1 where a larger one exists: a unit loop is dropped from
    blocks that cache_write / decompose_reduction create, which would change how many loops a
    replayed trace finds (MetaSchedule rejects such a trace)."""
    return [c for c in choices if c > 1] or choices


def tile_registers(rows: int, vectors: int, inputs_per_vector: int = 0) -> int:
    """Vector registers a rows x vectors tile needs: its accumulators, its weight vectors, two
    for the broadcast input (LLVM loads the next one while the last is in use), and
    `inputs_per_vector` more per column vector where inputs are vectors (depth-wise convs)."""
    return rows * vectors + vectors * (1 + inputs_per_vector) + 2


def register_tile_choices(rows: int, vectors_total: int, registers: int, max_vectors: int = 4,
                          inputs_per_vector: int = 0):
    """(row choices, vector choices, default (rows, vectors)) for a rows x cols output whose
    cols are `vectors_total` vectors, on a CPU with `registers` vector registers. The default
    is the largest tile that fits the register file (no spills in the inner loop): the most
    multiply-adds per loaded value (loads per step: rows + vectors, FMAs: rows x vectors)."""
    vector_options = [d for d in divisors(vectors_total) if d <= max_vectors]
    row_options = [d for d in divisors(rows) if tile_registers(d, 1) <= registers]
    best = max(((r, v) for r in row_options for v in vector_options
                if tile_registers(r, v, inputs_per_vector) <= registers),
               key=lambda rv: (rv[0] * rv[1], rv[1]))
    return without_unit(row_options), without_unit(vector_options), best


def register_tile(sch: s_tir.Schedule, block, rows: int | object, vectors: int | object, lanes: int,
                  parallel_jobs: int, col_block: int | None = None, unroll_reductions: int = 0,
                  row_block: int | None = None, pack_weights: bool = False):
    """Tile the reduction `block` (loops: spatial ..., row, col, then reductions) for registers.

    Loop order: parallel over (outer spatial, column block, row tiles[, column tiles]), then
    the reductions, then the `rows x vectors x lanes` tile (rows and vectors unrolled, lanes
    vectorised). `col_block` columns are walked per row tile so that the weights they read stay
    in cache. With `row_block` (a multiple of `rows` dividing the rows), the parallel loop is
    over blocks of that many rows instead, and each column tile walks the row tiles of its
    block: the weights a column tile reads (reduction x tile columns) are loaded into L1 once
    per row block rather than once per row tile; `pack_weights` copies them to a contiguous
    buffer first (the reads of the block's second input). Every block consuming `block`'s output
    elementwise is inlined into the write of the accumulators. `unroll_reductions`: unroll
    that many innermost reduction loops too. Returns the write-back block."""
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == 0]
    reductions = [loop for loop, kind in zip(loops, kinds) if kind != 0]
    *outer, row, col = spatial
    cols = int(sch.get(col).extent)
    if col_block and col_block < cols:
        col_outer, col = sch.split(col, [None, col_block])
        outer.append(col_outer)
    row_tiles = None
    if row_block:
        row_outer, row_tiles = sch.split(row, [None, row_block])
        row_tiles, row_inner = sch.split(row_tiles, [None, rows])
    else:
        row_outer, row_inner = sch.split(row, [None, rows])
    col_outer, col_vectors, col_lanes = sch.split(col, [None, vectors, lanes])
    tile_loops = [col_outer, row_tiles] if row_tiles is not None else [col_outer]
    sch.reorder(*outer, row_outer, *tile_loops, *reductions, row_inner, col_vectors, col_lanes)
    outer.append(row_outer)
    extents = [int(sch.get(loop).extent) for loop in outer]
    if math.prod(extents) < parallel_jobs:  # too few row tiles: spread the column tiles too
        outer.append(col_outer)
    parallel_loop = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(parallel_loop)
    column_loop = col_outer if not outer[-1].same_as(col_outer) else parallel_loop
    anchor = row_tiles if row_tiles is not None else column_loop

    if row_tiles is not None and pack_weights:
        # Copy the column tile's weights (reduction x tile columns) into a contiguous stack
        # buffer, once per row block: weight rows are a whole output row apart in memory, a
        # stride that maps them onto a few L1 sets, so the panel would not stay in L1 between
        # row tiles; packed, it does.
        packed = sch.cache_read(block, 1, "local")
        sch.compute_at(packed, column_loop)
        *_, packed_cols = sch.get_loops(packed)
        packed_vectors, packed_lanes = sch.split(packed_cols, [None, lanes])
        sch.unroll(packed_vectors)
        sch.vectorize(packed_lanes)

    accumulators = sch.cache_write(block, 0, "local")
    for consumer in elementwise_consumers(sch, accumulators):
        sch.reverse_compute_inline(consumer)
    sch.reverse_compute_at(accumulators, anchor)
    # Vectorise while the block still has its init: once decomposed, the update block is
    # neither complete nor a reduction, and vectorize refuses it.
    sch.unroll(row_inner)
    sch.unroll(col_vectors)
    sch.vectorize(col_lanes)
    for loop in reductions[len(reductions) - unroll_reductions:] if unroll_reductions else ():
        sch.unroll(loop)
    init = sch.decompose_reduction(block, reductions[0])
    init_loops = sch.get_loops(init)
    for loop in init_loops[-3:-1]:
        sch.unroll(loop)
    sch.vectorize(init_loops[-1])
    *write_outer, write_cols = sch.get_loops(accumulators)[-2:]
    _, write_lanes = sch.split(write_cols, [None, lanes])
    sch.vectorize(write_lanes)
    return accumulators


def elementwise_consumers(sch: s_tir.Schedule, block) -> list:
    """The chain of blocks after `block` that can be inlined into its write (in order)."""
    chain, current = [], block
    while True:
        consumers = sch.get_consumers(current)
        if len(consumers) != 1:
            return chain
        consumer = consumers[0]
        if not _is_elementwise(sch, consumer):
            return chain
        chain.append(consumer)
        current = consumer


def _is_elementwise(sch: s_tir.Schedule, block) -> bool:
    return all_spatial(sch, [block]) and len(sch.get(block).writes) == 1


def parallel_elementwise(sch: s_tir.Schedule, block, lanes: int) -> None:
    """An elementwise block: its loops fused, vectorised by the widest vector dividing them,
    and parallel over the rest."""
    loops = sch.get_loops(block)
    width = vector_lanes(int(sch.get(loops[-1]).extent), lanes)  # whole vectors within a row
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if width > 1:
        fused, inner = sch.split(fused, [None, width])
        sch.vectorize(inner)
    sch.parallel(fused)
