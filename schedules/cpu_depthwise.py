"""The 7x7 depth-wise convolutions on CPUs, channels-last, with the add and gate fused after
them (ParCNetV2's `dwconv2`, summed with the oversized conv's output and multiplied by the
other half of the channels).

Tiled like the other convs (`rows` output pixels x `vectors` channel vectors of
accumulators), except that each step reads an input vector rather than a broadcast scalar:
a depth-wise conv pairs channel c of the input with channel c of the kernel, so the tile
leaves a register per column vector for it. With 32 vector registers the kernel's column
loop is unrolled too, so that neighbouring outputs reuse the input vectors they share.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .cpu_conv import schedule_conv_nhwc
from .cpu_target import CpuHandRule

DEPTHWISE_BLOCKS = ("group_conv2d_nhwc", "depthwise_conv2d_nhwc")
SCHEDULE_RULE = "cpu_depthwise_conv"


class DepthwiseConvCpu(CpuHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_conv_nhwc(sch, target, tunable, DEPTHWISE_BLOCKS, depthwise=True)
