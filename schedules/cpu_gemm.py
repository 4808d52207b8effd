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
from dataclasses import dataclass

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


MICRO_GROUP = 4  # column tiles sharing a row tile's inputs in L1 (the A17's 32 KiB L1D)
MICRO_CHUNK_BYTES = 64 * 1024  # a chunk's accumulators (a stack buffer per thread)
MIN_DEPTH_STEP = 64  # shorter reduction steps would reload the accumulators too often


def micro_depth_block(depth: int, group: int, l1_bytes: int) -> int:
    """The reduction step of the NEON micro-kernel: the deepest (a multiple of the kernel's 4
    dividing `depth`) whose group of weight panels and one row tile's inputs fit 3/4 of the L1;
    the whole depth where no step of at least MIN_DEPTH_STEP fits."""
    per_step = (group * neon_gemm.COLUMNS + neon_gemm.TILE_ROWS) * 4
    steps = [d for d in divisors(depth) if d % neon_gemm.DEPTH_STEP == 0 and d * per_step <= l1_bytes * 3 // 4]
    return max(steps) if steps and max(steps) >= MIN_DEPTH_STEP else depth


@dataclass(frozen=True)
class MicroPlan:
    group: int                # column tiles per chunk
    tile_choices: list[int]   # row tiles per row block MetaSchedule may sample
    tiles_per_block: int      # the untuned choice

    def chunks(self, tiles: int, column_tiles: int) -> int:
        return tiles // self.tiles_per_block * (column_tiles // self.group)


def micro_plan(rows: int, columns: int, depth: int, cpu) -> MicroPlan:
    """How the NEON micro-kernel's GEMM is cut into parallel chunks of (row block, column group).

    A group's column tiles share each row tile's inputs in L1 (up to MICRO_GROUP); a block's
    row tiles share the group's weights, so the larger the block, the fewer times the weights
    are read (and copied, where they alias L1 sets). Row blocks are tile counts dividing the
    rows' tiles whose accumulators fit MICRO_CHUNK_BYTES. Where the column groups alone give
    the cores enough chunks, a block holds the most rows whose inputs fit 3/4 of the L2 the
    cores share (the weights take the rest); else the rows are split into enough blocks. Of
    the group sizes, the one whose chunks divide most evenly among the cores wins (the
    estimate's busiest thread sets the time), the largest group on a tie."""
    tiles, column_tiles = neon_gemm.padded_tiles(rows), columns // neon_gemm.COLUMNS
    row_bytes = neon_gemm.TILE_ROWS * depth * 4
    plans = []
    for group in sorted((d for d in divisors(column_tiles) if d <= MICRO_GROUP), reverse=True):
        tile_accumulators = neon_gemm.TILE_ROWS * group * neon_gemm.COLUMNS * 4
        choices = [d for d in divisors(tiles) if d * tile_accumulators <= MICRO_CHUNK_BYTES] or [1]
        fitting = [d for d in choices if d * row_bytes <= cpu.l2_bytes * cpu.cores * 3 // 4] or [1]
        column_groups = column_tiles // group
        if column_groups < cpu.parallel_jobs:
            needed = -(-cpu.parallel_jobs // column_groups)  # row blocks for enough chunks
            fitting = [d for d in fitting if tiles // d >= needed] or [1]
        plans.append(MicroPlan(group, without_unit(choices), max(fitting)))

    def uneven(plan: MicroPlan) -> float:
        chunks = plan.chunks(tiles, column_tiles)
        return -(-chunks // cpu.cores) * cpu.cores / chunks
    return min(plans, key=uneven)  # min keeps the first (largest group) of equals


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
            plan = micro_plan(rows, columns, depth, cpu)
            depth_block = micro_depth_block(depth, plan.group, cpu.l1_bytes)
            neon_gemm.micro_kernel_tile(
                sch, block, knob(sch, plan.tile_choices, plan.tiles_per_block, tunable), plan.group, depth_block,
                # a copied panel (2 memory operations per weight) pays for itself over 8 row tiles
                plan.tiles_per_block >= 8 and panel_conflicts(columns, depth_block, cpu.l1_bytes))
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
