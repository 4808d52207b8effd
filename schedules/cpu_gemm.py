"""GEMMs on CPUs (x86 AVX2/AVX-512, ARM NEON), with the ops fused after them.

On the channels-last graph every 1x1 conv and Linear layer is a GEMM (tokens x C_in) @
(C_in x C_out) with its bias or residual add (or both) fused after it; they were 86% of an
untuned XT's time under the generic fallback. Each thread owns row tiles of the output; a
tile is `rows x vectors` accumulator registers filled by one broadcast input scalar and
`vectors` weight vectors per reduction step, and the fused ops are applied to the
accumulators as they are written. Column blocks keep the weights a row tile walks (K x
columns) within half the L2 cache. On NEON, GEMMs whose columns are whole 8s and whose depth is
a multiple of 4 (all of ParCNetV2's) run on our micro-kernel instead (`neon_gemm.py`).
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from .common import divisors, knob, mark_root_untouchable
from .cpu_target import CpuHandRule, cpu_target
from . import neon_gemm
from .cpu_tiling import register_tile, register_tile_choices, vector_lanes, without_unit

GEMM_BLOCKS = ("matmul", "T_matmul_NN")
SCHEDULE_RULE = "cpu_gemm"


def find_gemm(sch: s_tir.Schedule):
    """The GEMM block (loops i, j, k reading A[i, k] and B[k, j]) when it is the first block
    of `sch` and everything after it is elementwise over its output; else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not blocks or sch.get(blocks[0]).name_hint not in GEMM_BLOCKS:
        return None
    gemm = sch.get(blocks[0])
    kinds = [iv.iter_type for iv in gemm.iter_vars]
    if kinds != [0, 0, 2] or len(gemm.reads) != 2:
        return None
    i, j, k = (iv.var for iv in gemm.iter_vars)
    a, b = (list(r.region) for r in gemm.reads)
    if [d.min.same_as(v) for d, v in zip(a, (i, k))] != [True, True] or \
            [d.min.same_as(v) for d, v in zip(b, (k, j))] != [True, True]:
        return None
    extents = [int(iv.dom.extent) for iv in gemm.iter_vars][:2]
    for block in blocks[1:]:
        if [int(sch.get(loop).extent) for loop in sch.get_loops(block)] != extents:
            return None
    return blocks[0]


def column_block(columns: int, depth: int, unit: int, l2_bytes: int) -> int | None:
    """Columns of the weights a row tile walks: the most (a multiple of `unit` dividing
    `columns`) whose depth x columns floats fit in half the L2; None when all of them fit."""
    if depth * columns * 4 <= l2_bytes // 2:
        return None
    fitting = [d for d in divisors(columns) if d % unit == 0 and depth * d * 4 <= l2_bytes // 2]
    return max(fitting) if fitting else None


def row_block(rows: int, row_choices: list[int], column_tiles: int, parallel_jobs: int) -> int | None:
    """Rows a thread's chunk walks per column tile (NEON): the smallest multiple of every row
    tile choice dividing `rows`, so that any sampled tile divides it (all the rows where that
    is one tile); None when the rows are one tile. Each column tile's weights (K x tile
    columns) are then read from L2 once per block instead of once per row tile: on the A17
    those reads were most of the GEMMs' L1 misses (13% of their estimate)."""
    unit = math.lcm(*row_choices)
    if rows % unit:
        return None
    if unit <= max(row_choices):
        unit = rows
    if unit <= max(row_choices) or rows // unit * column_tiles < parallel_jobs:
        return None  # one tile, or too few (block, column tile) chunks for the cores
    return unit


def micro_row_blocks(rows: int, columns: int, depth: int, cpu) -> tuple[list[int], int]:
    """Row tiles of the NEON micro-kernel per row block: the choices (tile counts dividing the
    rows' tiles) and the default. A block's rows are walked by every column tile with that
    tile's weights (depth x 8) in L1, so the larger the block, the fewer times the weights are
    read (and copied, where they alias L1 sets). The parallel chunks are (row block, column
    tile) pairs. Where the column tiles alone give the cores enough of them, a block holds the
    most rows whose inputs fit 3/4 of the L2 the cores share (the threads walk the same rows
    at once; the weights take the rest); else the rows are split into enough blocks."""
    tiles = -(-rows // neon_gemm.TILE_ROWS)  # rows are padded to whole tiles
    choices = divisors(tiles)
    row_bytes = neon_gemm.TILE_ROWS * depth * 4
    fitting = [d for d in choices if d * row_bytes <= cpu.l2_bytes * cpu.cores * 3 // 4] or [1]
    column_tiles = columns // neon_gemm.COLUMNS
    if column_tiles < cpu.parallel_jobs:
        needed = -(-cpu.parallel_jobs // column_tiles)  # row blocks for enough chunks
        fitting = [d for d in fitting if tiles // d >= needed] or [1]
    return without_unit(choices), max(fitting)


L1_WAYS, LINE_BYTES = 4, 64  # Cortex-A17 L1D (and the estimate's simulated cache)


def panel_conflicts(columns: int, depth: int, l1_bytes: int) -> bool:
    """Whether a column tile's weights (`depth` rows, `columns` floats apart) miss the L1 sets
    they would need to stay cached between row tiles: rows a power-of-two multiple of lines
    apart fall into a fraction of the sets; a panel over half of what those sets hold is
    evicted (by itself and the inputs) before the next row tile reads it again."""
    sets = l1_bytes // (L1_WAYS * LINE_BYTES)
    stride_lines = max(columns * 4 // LINE_BYTES, 1)
    reachable = sets // math.gcd(stride_lines, sets)
    return depth > reachable * L1_WAYS // 2


class GemmCpu(CpuHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        block = find_gemm(sch)
        if block is None:
            return False
        cpu = cpu_target(target)
        rows, columns, depth = (int(iv.dom.extent) for iv in sch.get(block).iter_vars)
        if cpu.isa == "neon" and neon_gemm.fits(rows, columns, depth):
            tiles_per_block, default_tiles = micro_row_blocks(rows, columns, depth, cpu)
            neon_gemm.micro_kernel_tile(
                sch, block, knob(sch, tiles_per_block, default_tiles, tunable),
                # a copied panel (2 memory operations per weight) pays for itself over 8 row tiles
                default_tiles >= 8 and panel_conflicts(columns, depth, cpu.l1_bytes))
            if tunable:
                mark_root_untouchable(sch)
            return True
        lanes = vector_lanes(columns, cpu.lanes)
        row_choices, vector_choices, (default_rows, default_vectors) = register_tile_choices(
            rows, columns // lanes, cpu.vector_registers)
        unit = lanes * math.lcm(*vector_choices)
        register_tile(sch, block,
                      knob(sch, row_choices, default_rows, tunable),
                      knob(sch, vector_choices, default_vectors, tunable),
                      lanes, cpu.parallel_jobs, column_block(columns, depth, unit, cpu.l2_bytes),
                      row_block=row_block(rows, row_choices, columns // (lanes * max(vector_choices)),
                                          cpu.parallel_jobs) if cpu.isa == "neon" else None,
                      pack_weights=panel_conflicts(columns, depth, cpu.l1_bytes))
        if tunable:
            mark_root_untouchable(sch)
        return True
