"""Multi-level tiling of the oversized op on CPUs (x86 and ARM share it; limits differ).

Each pass is a GEMM-shaped nest (n, c, i, j, r). We parallelise over (n, c), tile rows i
and columns j into a register block of `rows x cols` accumulators (cols vectorised, rows
unrolled), loop the reduction r around that block, and cache-write the accumulators so
they live in registers. In the fused op the H pass is computed per channel right before
the W pass that consumes it, so its H x W output stays in L1.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from .common import divisors, knob, mark_root_untouchable, oversized_blocks


@dataclass(frozen=True)
class CpuLimits:
    lanes: int                # fp32 lanes per vector register
    accumulator_vectors: int  # vector registers we let the accumulators take
    max_col_vectors: int      # widest column tile, in vectors


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
    return [d for d in rows if d > 1] or rows, [d for d in col_vectors if d > 1] or col_vectors


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
