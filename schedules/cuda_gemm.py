"""fp32 GEMMs on CUDA, with the ops fused after them; convolutions as implicit GEMMs.

On the channels-last graph every 1x1 conv and Linear layer is a GEMM (tokens x C_in) @
(C_in x C_out) with its bias or residual add fused after it, and the stem and downsampling
convs are GEMMs over patches: (output pixels) x (C_out), reducing over (kernel rows, kernel
columns, C_in). The apache-tvm wheel offloads nothing (no cuBLAS, cuDNN or CUTLASS) and
MetaSchedule's tensor-core rules are fp16/int8 only, so this is the kernel that runs them.

Each block computes a `block_rows x block_cols` tile of the output: per step of `depth`
along the reduction, its threads copy an A tile and a B tile into shared memory together
(vectorised global loads where the data is contiguous), and each thread multiplies a
`micro_rows x micro_cols` register tile out of them. The k loop is software-pipelined over
two shared buffers (double buffering; on sm_80 and newer the copies are asynchronous), and
the fused ops are applied to the accumulators on their single write. A conv is normalised
to the GEMM form first (its patches are never written out: the A tile is gathered from the
input, zero padding included, straight into shared memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir
from tvm.s_tir.dlight.gpu.matmul import (
    IterKind,
    auto_inline_consumer_chain,
    auto_inline_producers,
    detect_iter_traits,
    make_iter_fusion_index_map,
)
from tvm.target import Target

from .common import CudaHandRule, knob, mark_root_untouchable

SCHEDULE_RULE = "cuda_gemm"
SMS = 132  # streaming multiprocessors of an H100 SXM: tiles are chosen to fill at least two waves
MAX_THREADS = 256  # per block: leaves registers for 8x8 accumulators (64K registers per SM)
SHARED_BYTES = 48 * 1024
VECTOR = 4  # float4 loads
PAD_FACTOR = 16


@dataclass(frozen=True)
class GemmTile:
    threads_rows: int  # threadIdx.y
    threads_cols: int  # threadIdx.x: consecutive threads take consecutive output columns
    micro_rows: int    # each thread's register tile
    micro_cols: int
    depth: int         # reduction step staged in shared memory

    @property
    def rows(self) -> int:
        return self.threads_rows * self.micro_rows

    @property
    def cols(self) -> int:
        return self.threads_cols * self.micro_cols

    @property
    def threads(self) -> int:
        return self.threads_rows * self.threads_cols

    def shared_bytes(self) -> int:  # two stages of the A and B tiles, rows padded
        return 2 * 4 * (self.rows * padded_row(self.depth) + self.depth * padded_row(self.cols))


def padded_row(length: int) -> int:
    """Row stride of a shared tile (`storage_align` below): one vector past a multiple of
    16 floats, so threads reading down a column hit distinct banks and float4 stays aligned."""
    return length + (VECTOR - length) % PAD_FACTOR


def reduction_step(depth: int) -> int:
    """K per shared-memory stage: 16 where it divides K (or the largest divisor up to 16 that
    is at least 4), else 16 with the last step predicated."""
    fitting = [d for d in (16, 8, 4) if depth % d == 0]
    if fitting:
        return fitting[0]
    small = [d for d in range(16, 3, -1) if depth % d == 0]
    return small[0] if small else min(16, depth)


def _pow2_up_to(limit: int, largest: int) -> list[int]:
    return [v for v in (1, 2, 4, 8, 16, 32) if v <= max(1, limit) and v <= largest]


def tile_choices(rows: int, cols: int) -> dict[str, list[int]]:
    """The values each tile factor may take for a `rows x cols` output: powers of two that do
    not overshoot the output by a whole factor, within the thread and register limits."""
    return {
        "threads_rows": _pow2_up_to(rows, 16),
        "threads_cols": _pow2_up_to(cols, 32),
        "micro_rows": _pow2_up_to(rows, 8),
        "micro_cols": [v for v in (4, 8) if v <= cols] or _pow2_up_to(cols, 8),
    }


def default_tile(rows: int, cols: int, depth: int) -> GemmTile:
    """The untuned tile: the largest block tile that wastes little on ragged edges and still
    gives every SM two blocks; among equals, the larger register tile (more FMAs per load)."""
    choices = tile_choices(rows, cols)
    step = reduction_step(depth)
    best, best_score = None, None
    for tr in choices["threads_rows"]:
        for tc in choices["threads_cols"]:
            if not 32 <= tr * tc <= MAX_THREADS:
                continue
            for mr in choices["micro_rows"]:
                for mc in choices["micro_cols"]:
                    tile = GemmTile(tr, tc, mr, mc, step)
                    if tile.shared_bytes() > SHARED_BYTES:
                        continue
                    blocks = math.ceil(rows / tile.rows) * math.ceil(cols / tile.cols)
                    used = rows * cols / (blocks * tile.rows * tile.cols)
                    # little waste, one full wave of blocks, then the most reuse per load
                    score = (used >= 0.85, min(blocks, SMS), used >= 0.99, tile.rows * tile.cols, mr * mc)
                    if best_score is None or score > best_score:
                        best, best_score = tile, score
    return best


def find_gemm_like(sch: s_tir.Schedule):
    """The GEMM-like reduction block of `sch` (C[S, I, J] += A[S, I, K] * B[S, J, K] in some
    index form: a matmul or a conv over patches), with at most padding blocks before it and
    element-wise ops after it; else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if any(iv.iter_type != 0 for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    if detect_iter_traits(sch.get(block)) is None:
        return None
    at = [sch.get(b).same_as(sch.get(block)) for b in blocks].index(True)
    if any(len(sch.get(b).reads) != 1 for b in blocks[:at]):  # producers: padding only
        return None
    return block


def _normalise(sch: s_tir.Schedule, block):
    """Rewrite `block` as C[S, I, J] += A[S, I, K] * B[S, K, J] over reindexed buffers: loops
    (s, i, j, k). B keeps its columns innermost (the weights' contiguous axis)."""
    a_traits, b_traits, c_traits, block_traits = detect_iter_traits(sch.get(block))
    S, I, J, K = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K
    a = sch.reindex(block, ("read", 0))
    b = sch.reindex(block, ("read", 1))
    c = sch.reindex(block, ("write", 0))
    sch.transform_layout(a, ("write", 0), make_iter_fusion_index_map(a_traits, [S, I, K]))
    sch.transform_layout(b, ("write", 0), make_iter_fusion_index_map(b_traits, [S, K, J]))
    sch.transform_layout(c, ("read", 0), make_iter_fusion_index_map(c_traits, [S, I, J]))
    sch.transform_block_layout(block, make_iter_fusion_index_map(block_traits, [S, I, J, K]))


def _contiguous_run(sch: s_tir.Schedule, block, index: int) -> int:
    """Extent of the innermost axis of the buffer `block` reads as operand `index`."""
    return int(sch.get(block).reads[index].source.shape[-1])


def schedule_gemm(sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
    block = find_gemm_like(sch)
    if block is None:
        return False
    # Contiguity of the original operands decides which shared-memory copies can use float4.
    a_run, b_run = _contiguous_run(sch, block, 0), _contiguous_run(sch, block, 1)
    _normalise(sch, block)
    s, i, j, k = sch.get_loops(block)
    rows, cols, depth = (int(sch.get(loop).extent) for loop in (i, j, k))
    tile = default_tile(rows, cols, depth)
    choices = tile_choices(rows, cols)
    threads_rows = knob(sch, choices["threads_rows"], tile.threads_rows, tunable and rows >= 64)
    threads_cols = knob(sch, [v for v in choices["threads_cols"] if v >= 8] or [tile.threads_cols],
                        tile.threads_cols, tunable and cols >= 64)
    micro_rows = knob(sch, [v for v in choices["micro_rows"] if v >= 2] or [tile.micro_rows],
                      tile.micro_rows, tunable and rows >= 64)
    micro_cols = knob(sch, choices["micro_cols"], tile.micro_cols, tunable and cols >= 64)
    step = tile.depth

    i_block, i_thread, i_micro = sch.split(i, [None, threads_rows, micro_rows])
    j_block, j_thread, j_micro = sch.split(j, [None, threads_cols, micro_cols])
    k_outer, k_inner = sch.split(k, [None, step])
    sch.reorder(s, i_block, j_block, i_thread, j_thread, k_outer, k_inner, i_micro, j_micro)
    sch.bind(sch.fuse(s, i_block), "blockIdx.y")
    sch.bind(j_block, "blockIdx.x")
    sch.bind(i_thread, "threadIdx.y")
    sch.bind(j_thread, "threadIdx.x")

    accumulators = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulators, j_thread, preserve_unit_loops=True)

    a_vector = VECTOR if a_run % VECTOR == 0 and step % VECTOR == 0 else 1
    b_vector = VECTOR if b_run % VECTOR == 0 and cols % VECTOR == 0 else 1
    for index, vector in ((0, a_vector), (1, b_vector)):
        shared = sch.cache_read(block, index, "shared")
        sch.compute_at(shared, k_outer, preserve_unit_loops=True)
        auto_inline_producers(sch, shared)  # the reindex (and padding) read straight from global
        copy_loops = sch.get_loops(shared)[-2:]  # the tile's two axes (s is 1 within a block)
        _, ty, tx, lanes = sch.split(sch.fuse(*copy_loops), [None, threads_rows, threads_cols, vector])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        if vector > 1:
            sch.vectorize(lanes)
        sch.storage_align(shared, 0, axis=-2, factor=PAD_FACTOR, offset=VECTOR)  # padded_row
    # registers: each thread's slice of the A and B tiles for one k step (B's as float4)
    whole_vectors = all(v % VECTOR == 0 for v in choices["micro_cols"]) and cols % VECTOR == 0
    for index in (0, 1):
        local = sch.cache_read(block, index, "local")
        sch.compute_at(local, k_inner, preserve_unit_loops=True)
        if index == 1 and whole_vectors:
            sch.vectorize(sch.get_loops(local)[-1])
    sch.unroll(k_inner)
    sch.unroll(i_micro)
    sch.unroll(j_micro)

    auto_inline_consumer_chain(sch, accumulators)  # bias, residual add, reshape: on the write
    if whole_vectors:
        _, lanes = sch.split(sch.get_loops(accumulators)[-1], [None, VECTOR])
        sch.vectorize(lanes)
    sch.decompose_reduction(block, k_outer)
    # double buffering: the copies of step k+1 are issued before the FMAs of step k
    sch.annotate(k_outer, "software_pipeline_stage", [0, 0, 1])
    sch.annotate(k_outer, "software_pipeline_order", [0, 1, 2])
    if _sm_version(target) >= 80:
        sch.annotate(k_outer, "software_pipeline_async_stages", [0])
    if tunable:
        mark_root_untouchable(sch)
    return True


def _sm_version(target: Target) -> int:
    arch = str(target.attrs.get("arch", "sm_0"))
    digits = "".join(ch for ch in arch if ch.isdigit())
    return int(digits or 0)


class GemmCuda(CudaHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_gemm(sch, target, tunable)
