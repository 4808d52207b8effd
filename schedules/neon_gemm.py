"""ARM GEMMs on our NEON micro-kernel (parcnet_tvm/arm_kernels/neon_sgemm.cc).

The micro-kernel adds one 6 x 8 output tile's product over a run of the reduction to the
tile, with ARMv7's by-lane multiply-add, which LLVM does not emit for TVM's loops (see the
kernel's header), from the tile's 6 input rows packed side by side (K x 6 floats). Here the
GEMM's rows are padded to whole tiles and packed in one parallel pass; a thread's chunk is a
block of row tiles by a group of column tiles, walked in reduction steps sized so that a row
tile's inputs stay in L1 across the group and the group's weights across the row tiles
(copied per step where their rows alias few L1 sets); each 6 x 8 x step nest is tensorized
into a call of the kernel. The fused ops after the GEMM are applied when the chunk is written
back from its stack buffer (only the real rows are written).

The tensor intrinsic depends on the step (TIR descriptions have static extents): one is registered
per step and weight-buffer scope, on first use; `register_intrinsics_named_in` registers the
ones a tuning log's records name before MetaSchedule replays them.
"""

from __future__ import annotations

import re

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .common import frames_without_source
from .cpu_tiling import elementwise_consumers

TILE_ROWS, COLUMNS, DEPTH_STEP = 6, 8, 4  # the kernel's tile; the reduction step packing reads
SYMBOL = "parcnet_sgemm_6x8_packed"
INTRINSIC_NAME = "parcnet_neon_sgemm_6x8_k{depth}_{scope}"
_NAMED = re.compile(r"parcnet_neon_sgemm_6x8_k(\d+)_(global|local)")
_REGISTERED: set[str] = set()


def fits(rows: int, columns: int, depth: int) -> bool:
    """Whether a rows x columns GEMM over `depth` is made of whole micro-kernel tiles in its
    columns and reduction (rows are padded to whole tiles)."""
    return columns % COLUMNS == 0 and depth % DEPTH_STEP == 0 and depth >= DEPTH_STEP


def padded_tiles(rows: int) -> int:
    """Row tiles a GEMM of `rows` is padded to: whole tiles, and a few more where their count
    has no divisor between 8 and 32 to make row blocks of (56 x 56 maps: 523 tiles, a prime,
    are padded to 525 = 21 x 25; 0.4% more multiply-adds)."""
    tiles = -(-rows // TILE_ROWS)
    if tiles < 64:
        return tiles
    while not any(tiles % d == 0 for d in range(8, 33)):
        tiles += 1
    return tiles


def intrinsic(depth: int, weights_scope: str) -> str:
    """The name of the tensor intrinsic for reductions of `depth`, weights in `weights_scope`
    (global, or local for a copied panel), registered on first use."""
    name = INTRINSIC_NAME.format(depth=depth, scope=weights_scope)
    if name not in _REGISTERED:
        with frames_without_source():
            TensorIntrin.register(name, *_functions(depth, weights_scope), override=True)
        _REGISTERED.add(name)
    return name


def _functions(depth: int, weights_scope: str):
    rows = TILE_ROWS

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (1, depth, rows), "float32", offset_factor=1)
        B = T.match_buffer(b, (depth, COLUMNS), "float32", offset_factor=1, scope=weights_scope)
        C = T.match_buffer(c, (rows, COLUMNS), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:COLUMNS], A[0, 0:depth, 0:rows], B[0:depth, 0:COLUMNS])
            T.writes(C[0:rows, 0:COLUMNS])
            for i, j, k in T.grid(rows, COLUMNS, depth):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + A[0, vk, vi] * B[vk, vj]

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        ldb = T.int32()
        ldc = T.int32()
        A = T.match_buffer(a, (1, depth, rows), "float32", offset_factor=1)
        B = T.match_buffer(b, (depth, COLUMNS), "float32", offset_factor=1, strides=[ldb, 1],
                           scope=weights_scope)
        C = T.match_buffer(c, (rows, COLUMNS), "float32", offset_factor=1, strides=[ldc, 1],
                           scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:COLUMNS], A[0, 0:depth, 0:rows], B[0:depth, 0:COLUMNS])
            T.writes(C[0:rows, 0:COLUMNS])
            # The kernel takes 32-bit ints; the model's buffers index in int64 (and an i64
            # argument would take a register pair on ARM).
            T.evaluate(T.call_extern("int32", SYMBOL, C.access_ptr("rw"), T.Cast("int32", ldc),
                                     A.access_ptr("r"), B.access_ptr("r"), T.Cast("int32", ldb),
                                     T.int32(depth)))

    return description, implementation


def register_intrinsics_named_in(text: str) -> None:
    """Register the intrinsics a tuning log's records name (MetaSchedule replays each record's
    trace when it loads the log, and a Tensorize step needs its intrinsic registered)."""
    for depth, scope in set(_NAMED.findall(text)):
        intrinsic(int(depth), scope)


def micro_kernel_tile(sch: s_tir.Schedule, block, tiles_per_block, group: int, depth_block: int,
                      pack_weights: bool) -> None:
    """Tile the GEMM `block` (loops i, j, k; `fits` holds) onto the micro-kernel, its rows
    padded to `padded_tiles` row tiles.

    Loop order: row blocks of `tiles_per_block` row tiles and groups of `group` column tiles
    (the two fused into the parallel loop: each chunk is one group of one row block), the
    reduction in steps of `depth_block`, the row tiles of the block, the column tiles of the
    group, and the 6 x 8 x depth_block nest the kernel computes. Per reduction step, each row
    tile's inputs stay in L1 across the group's column tiles and the group's weights across
    the row tiles (on the A17 the kernel's L1 misses were a tenth of T's estimate: without
    the steps, a row tile's inputs came from L2 once per column tile, and weights over ~400
    rows deep from L2 once per row tile). The chunk's accumulators live in a stack buffer that
    the kernel reads and writes; its write-back applies the fused ops."""
    i, j, k = sch.get_loops(block)
    depth, rows = int(sch.get(k).extent), int(sch.get(i).extent)
    tiles = padded_tiles(rows)
    padded = tiles * TILE_ROWS != rows
    if padded:
        # Rows padded to whole tiles (7x7 maps: 49 -> 54): the input rows are copied with zeros
        # below them, and only the real rows are written out.
        sch.pad_einsum(block, [tiles * TILE_ROWS, int(sch.get(j).extent), depth])
        i, j, k = sch.get_loops(block)
    _pack_rows(sch, block, padded)
    row_outer, row_tiles, row_inner = sch.split(i, [None, tiles_per_block, TILE_ROWS])
    col_groups, col_tiles, col_inner = sch.split(j, [None, group, COLUMNS])
    depth_steps, step = sch.split(k, [None, depth_block])
    sch.reorder(row_outer, col_groups, depth_steps, row_tiles, col_tiles, row_inner, col_inner, step)
    column_loop = sch.fuse(row_outer, col_groups)
    sch.parallel(column_loop)

    weights_scope = "global"
    if pack_weights:
        # The group's weights for one reduction step copied to a contiguous buffer: weight rows
        # a whole output row apart alias a few L1 sets (cpu_gemm.panel_conflicts).
        packed = sch.cache_read(block, 1, "local")
        sch.compute_at(packed, depth_steps)
        *_, packed_cols = sch.get_loops(packed)
        _, lanes = sch.split(packed_cols, [None, COLUMNS])
        sch.vectorize(lanes)
        weights_scope = "local"

    accumulators = sch.cache_write(block, 0, "local")
    consumers = elementwise_consumers(sch, accumulators)
    crop = None
    if padded:
        # The fused ops go into the block that crops the padded rows, computed right after the
        # chunk's write-back (inlined into the write-back, the crop's bound on the rows was lost
        # and the padding written).
        crop, *consumers = consumers
    for consumer in consumers:
        sch.reverse_compute_inline(consumer)
    sch.reverse_compute_at(accumulators, column_loop)
    if crop is not None:
        sch.reverse_compute_at(crop, column_loop)
        sch.compute_inline(accumulators)  # the crop reads the chunk from its stack buffer
        accumulators = crop
    init = sch.decompose_reduction(block, depth_steps)
    _vectorize_rows(sch, init)
    sch.tensorize(sch.get_loops(block)[-3], intrinsic(depth_block, weights_scope))
    _vectorize_rows(sch, accumulators)


def _vectorize_rows(sch: s_tir.Schedule, block) -> None:
    """The chunk's zeroing and write-back: rows of 4-lane vectors."""
    columns = sch.get_loops(block)[-1]
    _, lanes = sch.split(columns, [None, 4])
    sch.vectorize(lanes)


def _pack_rows(sch: s_tir.Schedule, block, padded: bool) -> None:
    """Copy the GEMM's input rows into the packed layout the kernel reads (tiles, K, rows of a
    tile), in one parallel pass before the GEMM: each row is read as vectors of 4 values."""
    pack = sch.get_producers(block)[0] if padded else sch.cache_read(block, 0, "global")
    sch.transform_layout(pack, ("write", 0), lambda r, k: (r // TILE_ROWS, k, r % TILE_ROWS))
    r, k = sch.get_loops(pack)
    tiles, row = sch.split(r, [None, TILE_ROWS])
    k_vectors, lanes = sch.split(k, [None, DEPTH_STEP])
    sch.reorder(tiles, k_vectors, row, lanes)
    sch.parallel(tiles)
    sch.unroll(row)
    sch.vectorize(lanes)
