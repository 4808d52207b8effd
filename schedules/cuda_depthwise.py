"""CUDA schedule of small depth-wise convolutions (ParCNetV2's 7x7 `dwconv2`) and the
element-wise ops fused after them.

dlight has no rule for them: its GeneralReduction rule gives every output element a thread
block of 256 threads that reduce its 49 products together (T at batch 32: 6.4 million blocks
for one stage-1 layer). Here a block holds whole maps of a few channels: the zero-padded input
is staged in shared memory once, each thread accumulates `tile` outputs down one column in
registers (with the kernel loops unrolled, neighbouring outputs share their input values), and
the fused element-wise ops are applied to the accumulators before the single write.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .common import HandRule, divisors, largest_divisor, mark_root_untouchable
from .cuda import (
    MAX_TILE,
    accumulate_in_registers,
    largest_fitting,
    split_channel_groups,
    spread_over_threads,
    stage_in_shared,
)

CONV_BLOCK = "group_conv2d_nchw"  # TOPI's name for grouped (here depth-wise) NCHW convs
MAX_TAPS = 81  # kernels up to 9x9: the unrolled kernel loops stay small
SCHEDULE_RULE = "depthwise_conv"


def _depthwise_conv(sch: s_tir.Schedule):
    """(pad block, conv block, [element-wise blocks after it]) when `sch` is a depth-wise
    conv (one input channel per group) with a small kernel and only element-wise ops after
    it, else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    if CONV_BLOCK not in names:
        return None
    at = names.index(CONV_BLOCK)
    conv = blocks[at]
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        return None
    extents = [int(sch.get(loop).extent) for loop in loops]
    _, _, height, width, in_per_group, kernel_h, kernel_w = extents
    if in_per_group != 1 or kernel_h * kernel_w > MAX_TAPS or at != 1:
        return None
    pad = blocks[0]
    padded = [int(d) for d in sch.get(pad).writes[0].source.shape]
    if len(sch.get(pad).reads) != 1 or padded[2:] != [height + kernel_h - 1, width + kernel_w - 1]:
        return None  # not a padding block, or a strided conv
    epilogue = blocks[at + 1:]
    for block in epilogue:  # element-wise over the conv's output shape
        if any(len(r.region) != 4 for r in sch.get(block).reads):
            return None
        if [int(sch.get(loop).extent) for loop in sch.get_loops(block)] != extents[:4]:
            return None
    return pad, conv, epilogue


def mark_depthwise_convs(mod: tvm.IRModule) -> tvm.IRModule:
    """Annotate each depth-wise conv our rule schedules, so that MetaSchedule tunes it within
    our schedule (its knob: channels per block) rather than with its generic rules; the
    padding and element-wise blocks, which our schedule places, are marked to be left alone."""
    for var, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        found = _depthwise_conv(sch)
        if found is None:
            continue
        pad, conv, epilogue = found
        sch.annotate(conv, "schedule_rule", SCHEDULE_RULE)
        for block in (pad, *epilogue):
            sch.annotate(block, "schedule_rule", "None")
        mod.update_func(var, sch.mod["main"])
    return mod


def schedule_depthwise(sch: s_tir.Schedule, tunable: bool) -> bool:
    found = _depthwise_conv(sch)
    if found is None:
        return False
    pad, conv, epilogue = found
    n, c, y, x, rc, ry, rx = sch.get_loops(conv)
    height, width, kernel_h, kernel_w = (int(sch.get(loop).extent) for loop in (y, x, ry, rx))

    def shared_bytes(rows: int) -> int:  # one channel: its padded rows and its taps
        return 4 * ((rows + kernel_h - 1) * (width + kernel_w - 1) + kernel_h * kernel_w)

    def threads(rows: int) -> int:  # one channel: `tile` outputs down a column per thread
        return rows // largest_divisor(rows, MAX_TILE) * width

    rows = largest_fitting(divisors(height), shared_bytes, threads)  # whole maps unless they do not fit
    if rows is None:
        return False
    shared_per_channel, threads_per_channel = shared_bytes(rows), threads(rows)
    tile = largest_divisor(rows, MAX_TILE)

    # Element-wise ops: all folded into the first one, which runs on each thread's accumulators.
    for block in reversed(epilogue[1:]):
        sch.reverse_compute_inline(block)
    c_out, c_in, group = split_channel_groups(sch, c, threads_per_channel, shared_per_channel, tunable)
    y_block, y_thread, y_lane = sch.split(y, [None, rows // tile, tile])
    sch.reorder(c_out, y_block, c_in, y_thread, x, rc, ry, rx, y_lane)
    sch.bind(sch.fuse(n, c_out), "blockIdx.x")
    sch.bind(y_block, "blockIdx.y")
    thread = sch.fuse(c_in, y_thread, x)
    sch.bind(thread, "threadIdx.x")
    for loop in (ry, rx, y_lane):
        sch.unroll(loop)
    if epilogue:
        sch.set_scope(conv, 0, "local")
        sch.reverse_compute_at(epilogue[0], thread, preserve_unit_loops=True)
    else:
        accumulate_in_registers(sch, conv, thread)
    # The zero-padded maps of the block's channels, built in shared memory by all its threads.
    sch.set_scope(pad, 0, "shared")
    sch.compute_at(pad, y_block, preserve_unit_loops=True)
    spread_over_threads(sch, pad, [group, threads_per_channel])
    already_shared = {str(sch.get(pad).writes[0].source.name)}
    stage_in_shared(sch, conv, y_block, [group, threads_per_channel], skip=already_shared)  # the taps
    if tunable:
        mark_root_untouchable(sch)
    return True


class DepthwiseConvCuda(HandRule):
    name = SCHEDULE_RULE

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "cuda"

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_depthwise(sch, tunable)
