"""ARM GEMMs on our NEON micro-kernel (parcnet_tvm/arm_kernels/neon_sgemm.cc).

The micro-kernel computes one 4 x 8 output tile over the whole reduction with ARMv7's by-lane
multiply-add, which LLVM does not emit for TVM's loops (see the kernel's header). Here the
GEMM is tiled as on every CPU (parallel row blocks, a column tile's weights reused from L1
across the row tiles of a block, panels copied where their rows alias few L1 sets), and the
innermost 4 x 8 x K nest of each tile is tensorized into a call of the kernel. The fused ops
after the GEMM are applied when the tile is written back from its 4 x 8 stack buffer.

The tensor intrinsic depends on K (TIR descriptions have static extents): one is registered
per depth and weight-buffer scope, on first use; `register_intrinsics(mod)` registers the ones
a module's GEMMs need before a tuning database's traces are replayed on it.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .cpu_tiling import elementwise_consumers, parallel_elementwise

ROWS, COLUMNS, DEPTH_STEP = 4, 8, 4  # the kernel's tile, and the reduction step it needs
SYMBOL = "parcnet_sgemm_4x8"
_REGISTERED: set[str] = set()


def fits(rows: int, columns: int, depth: int) -> bool:
    """Whether a rows x columns GEMM over `depth` is made of whole micro-kernel tiles in its
    columns and reduction (rows are padded to whole tiles)."""
    return columns % COLUMNS == 0 and depth % DEPTH_STEP == 0 and depth >= DEPTH_STEP


def intrinsic(depth: int, weights_scope: str) -> str:
    """The name of the tensor intrinsic for reductions of `depth`, weights in `weights_scope`
    (global, or local for a copied panel), registered on first use."""
    name = f"parcnet_neon_sgemm_4x8_k{depth}_{weights_scope}"
    if name not in _REGISTERED:
        TensorIntrin.register(name, *_functions(depth, weights_scope), override=True)
        _REGISTERED.add(name)
    return name


def _functions(depth: int, weights_scope: str):
    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (ROWS, depth), "float32", offset_factor=1)
        B = T.match_buffer(b, (depth, COLUMNS), "float32", offset_factor=1, scope=weights_scope)
        C = T.match_buffer(c, (ROWS, COLUMNS), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:ROWS, 0:COLUMNS], A[0:ROWS, 0:depth], B[0:depth, 0:COLUMNS])
            T.writes(C[0:ROWS, 0:COLUMNS])
            for i, j, k in T.grid(ROWS, COLUMNS, depth):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        lda = T.int32()
        ldb = T.int32()
        ldc = T.int32()
        A = T.match_buffer(a, (ROWS, depth), "float32", offset_factor=1, strides=[lda, 1])
        B = T.match_buffer(b, (depth, COLUMNS), "float32", offset_factor=1, strides=[ldb, 1],
                           scope=weights_scope)
        C = T.match_buffer(c, (ROWS, COLUMNS), "float32", offset_factor=1, strides=[ldc, 1],
                           scope="local")
        with T.sblock("root"):
            T.reads(C[0:ROWS, 0:COLUMNS], A[0:ROWS, 0:depth], B[0:depth, 0:COLUMNS])
            T.writes(C[0:ROWS, 0:COLUMNS])
            # The kernel takes 32-bit ints; the model's buffers index in int64 (and an i64
            # argument would take a register pair on ARM).
            T.evaluate(T.call_extern("int32", SYMBOL, C.access_ptr("rw"), T.Cast("int32", ldc),
                                     A.access_ptr("r"), T.Cast("int32", lda), B.access_ptr("r"),
                                     T.Cast("int32", ldb), T.int32(depth)))

    return description, implementation


def register_intrinsics(mod) -> None:
    """Register the intrinsics every GEMM of `mod` could be tensorized with (a database's
    traces name them; replaying one needs it registered in this process)."""
    for _, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        for depth in _reduction_extents(func):
            if depth % DEPTH_STEP == 0:
                for scope in ("global", "local"):
                    intrinsic(depth, scope)


def _reduction_extents(func) -> set[int]:
    found = set()

    def visit(node):
        if isinstance(node, tirx.SBlock):
            for iv in node.iter_vars:
                if iv.iter_type == 2 and isinstance(iv.dom.extent, tirx.IntImm):
                    found.add(int(iv.dom.extent))

    tirx.stmt_functor.post_order_visit(func.body, visit)
    return found


def micro_kernel_tile(sch: s_tir.Schedule, block, parallel_jobs: int, tiles_per_block, default_tiles: int,
                      col_block: int | None, pack_weights: bool) -> None:
    """Tile the GEMM `block` (loops i, j, k; `fits` holds) onto the micro-kernel.

    Loop order: parallel over (row blocks of `tiles_per_block` row tiles [, column tiles]),
    then column tiles of 8, the row tiles of the block, and the 4 x 8 x K nest the kernel
    computes. `default_tiles` (the knob's untuned value) decides whether the row blocks alone
    give the cores `parallel_jobs` chunks. The accumulator tile lives in a 4 x 8 buffer that
    the kernel reads and writes; its write-back applies the fused ops."""
    i, j, k = sch.get_loops(block)
    depth, rows = int(sch.get(k).extent), int(sch.get(i).extent)
    if rows % ROWS:
        # Rows padded to whole tiles (7x7 maps: 49 -> 52): the input rows are copied with zeros
        # below them, and only the real rows are written out.
        sch.pad_einsum(block, [-(-rows // ROWS) * ROWS, int(sch.get(j).extent), depth])
        i, j, k = sch.get_loops(block)
    row_tiles_total = int(sch.get(i).extent) // ROWS
    outer = []
    if col_block and col_block < int(sch.get(j).extent):
        col_outer, j = sch.split(j, [None, col_block])
        outer.append(col_outer)
    row_outer, row_tiles, row_inner = sch.split(i, [None, tiles_per_block, ROWS])
    col_tiles, col_inner = sch.split(j, [None, COLUMNS])
    sch.reorder(*outer, row_outer, col_tiles, row_tiles, row_inner, col_inner, k)
    outer.append(row_outer)
    blocks = row_tiles_total // default_tiles * (int(sch.get(outer[0]).extent) if len(outer) > 1 else 1)
    if blocks < parallel_jobs:  # too few row blocks: spread the column tiles too
        outer.append(col_tiles)
    parallel_loop = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(parallel_loop)
    column_loop = parallel_loop if outer[-1].same_as(col_tiles) else col_tiles

    weights_scope = "global"
    if pack_weights:
        # The column tile's weights (K x 8) copied to a contiguous buffer once per row block:
        # weight rows a whole output row apart alias a few L1 sets (cpu_gemm.panel_conflicts).
        packed = sch.cache_read(block, 1, "local")
        sch.compute_at(packed, column_loop)
        *_, packed_cols = sch.get_loops(packed)
        sch.vectorize(packed_cols)
        weights_scope = "local"

    accumulators = sch.cache_write(block, 0, "local")
    consumers = elementwise_consumers(sch, accumulators)
    if rows % ROWS:
        # The fused ops go into the block that crops the padded rows, a pass of its own (inlined
        # into the write-back, the crop's bound on the rows was lost and the padding written).
        crop, *consumers = consumers
        for consumer in consumers:
            sch.reverse_compute_inline(consumer)
        parallel_elementwise(sch, crop, 4)
        consumers = []
    for consumer in consumers:
        sch.reverse_compute_inline(consumer)
    sch.reverse_compute_at(accumulators, row_tiles)
    init = sch.decompose_reduction(block, row_inner)
    init_rows, init_cols = sch.get_loops(init)[-2:]
    sch.unroll(init_rows)
    sch.vectorize(init_cols)
    sch.tensorize(sch.get_loops(block)[-3], intrinsic(depth, weights_scope))
    write_rows, write_cols = sch.get_loops(accumulators)[-2:]
    sch.unroll(write_rows)
    _, write_lanes = sch.split(write_cols, [None, 4])
    sch.vectorize(write_lanes)
