"""CUDA schedule of the small depth-wise convolutions (ParCNetV2's 7x7 `dwconv2`),
channels-last, with the element-wise ops fused after them (the add of the oversized conv's
output and the gate).

dlight has no rule for them (its reduction rules give every output a thread block that
reduces its 49 products together). Here consecutive threads take consecutive channels, so
every load and store of a warp is one contiguous run, and each thread accumulates `tile`
neighbouring outputs of one image row in registers: with the kernel loops unrolled,
neighbouring outputs share their input values in registers instead of reloading them. A
block is one image row's worth of (column tiles x channels); the zero padding is folded
into the loads, and the fused ops are applied to the accumulators before the single write.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain
from tvm.target import Target

from .common import CudaHandRule, divisors, knob, largest_divisor, mark_root_untouchable
from .patterns import find_conv_nhwc

DEPTHWISE_BLOCKS = ("group_conv2d_nhwc", "depthwise_conv2d_nhwc")
SCHEDULE_RULE = "cuda_depthwise_conv"
MAX_TAPS = 81  # kernels up to 9x9: the unrolled kernel loops stay small
MAX_TILE = 8  # outputs per thread along the row
MAX_CHANNEL_THREADS = 128
MAX_THREADS = 1024


def channel_threads(channels: int) -> int:
    """Threads across the channels of a block: all of them up to 128, else the largest
    divisor of the channel count up to 128."""
    return largest_divisor(channels, MAX_CHANNEL_THREADS)


def schedule_depthwise(sch: s_tir.Schedule, tunable: bool) -> bool:
    found = find_conv_nhwc(sch, DEPTHWISE_BLOCKS)
    if found is None:
        return False
    pad, conv = found
    n, h, w, c, rh, rw, rc = sch.get_loops(conv)
    width, channels, kernel_h, kernel_w, per_group = (int(sch.get(loop).extent) for loop in (w, c, rh, rw, rc))
    if per_group != 1 or kernel_h * kernel_w > MAX_TAPS:
        return False
    c_threads = channel_threads(channels)
    tile_choices = [d for d in divisors(width) if d <= MAX_TILE and width // d * c_threads <= MAX_THREADS]
    if not tile_choices:
        return False
    tile = knob(sch, tile_choices, max(tile_choices), tunable)
    if pad is not None:
        sch.compute_inline(pad)  # zero padding as a condition on the loads
    w_thread, w_tile = sch.split(w, [None, tile])
    c_block, c_thread = sch.split(c, [None, c_threads])
    sch.reorder(n, h, c_block, w_thread, c_thread, rc, rh, rw, w_tile)
    sch.bind(sch.fuse(n, h, c_block), "blockIdx.x")
    thread = sch.fuse(w_thread, c_thread)
    sch.bind(thread, "threadIdx.x")
    accumulators = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(accumulators, thread, preserve_unit_loops=True)
    auto_inline_consumer_chain(sch, accumulators)  # the add and the gate, on the write
    for loop in (rh, rw, w_tile):
        sch.unroll(loop)
    sch.decompose_reduction(conv, rc)
    if tunable:
        mark_root_untouchable(sch)
    return True


class DepthwiseConvCuda(CudaHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_depthwise(sch, tunable)
