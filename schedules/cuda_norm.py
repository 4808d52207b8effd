"""Normalisations and other reductions on CUDA.

LayerNormGeneral (our one-op form, `parcnet_tvm/norm.py`): one warp per token. Its 32 threads
read the token's channels together (coalesced: channels are contiguous), reduce both sums
across the warp (TVM lowers a reduction over a threadIdx.x loop to warp shuffles), and write
the normalised channels; a block holds `tokens` warps.

Other reductions (the head's mean over the map and its LayerNorm: a few hundred values per
image, once per forward pass): one thread per output value, consecutive threads on
consecutive channels, every reduction it needs computed by that thread.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import CudaHandRule, knob, mark_root_untouchable
from .patterns import find_norm

WARP = 32
TOKEN_CHOICES = [1, 2, 4, 8]
DEFAULT_TOKENS = 4  # warps per block


def _across_warp(sch: s_tir.Schedule, block, at_loop) -> None:
    """`block`'s reduction over its last loop, computed under `at_loop` by the warp's lanes."""
    sch.compute_at(block, at_loop, preserve_unit_loops=True)
    sch.set_scope(block, 0, "shared")  # the token's sum, for all the warp's lanes
    _, lanes = sch.split(sch.get_loops(block)[-1], [None, WARP])
    sch.bind(lanes, "threadIdx.x")


class LayerNormGeneralCuda(CudaHandRule):
    name = "cuda_layer_norm_general"

    def apply(self, func, target: Target, tunable: bool):
        # TIR's affine analysis refuses some token counts for some map sizes (T's 14x14 stage
        # with 4 tokens per block): untuned builds take the next one that schedules.
        for tokens in (DEFAULT_TOKENS, *TOKEN_CHOICES[::-1]):
            self.tokens = tokens
            sch = super().apply(func, target, tunable)
            if sch is not None:
                return sch
        return None

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        blocks = find_norm(sch)
        if blocks is None:
            return False
        sums, squares, out = blocks
        *token_loops, channel = sch.get_loops(out)
        tokens = knob(sch, TOKEN_CHOICES, getattr(self, "tokens", DEFAULT_TOKENS), tunable)
        token_block, token = sch.split(sch.fuse(*token_loops), [None, tokens])
        _, lanes = sch.split(channel, [None, WARP])
        sch.reorder(token_block, token, lanes)
        sch.bind(token_block, "blockIdx.x")
        sch.bind(token, "threadIdx.y")
        sch.bind(lanes, "threadIdx.x")
        _across_warp(sch, squares, token)
        _across_warp(sch, sums, token)
        if tunable:
            mark_root_untouchable(sch)
        return True


class ReductionCuda(CudaHandRule):
    name = "cuda_reduction"
    THREADS = 128

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        if not any(iv.iter_type == 2 for b in blocks for iv in sch.get(b).iter_vars):
            return False
        outputs = sch.get_output_blocks(root)
        if len(outputs) != 1 or any(iv.iter_type != 0 for iv in sch.get(outputs[0]).iter_vars):
            return False  # one element-wise output block, everything before it its inputs
        out = outputs[0]
        block_loop, thread = sch.split(sch.fuse(*sch.get_loops(out)), [None, self.THREADS])
        sch.bind(block_loop, "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
        for block in reversed(blocks[:-1]):  # each producer computed by the thread that needs it
            if any(iv.iter_type == 2 for iv in sch.get(block).iter_vars):
                sch.compute_at(block, thread, preserve_unit_loops=True)
                sch.set_scope(block, 0, "local")
            else:
                sch.compute_inline(block)
        if tunable:
            mark_root_untouchable(sch)
        return True
