"""The stem and downsampling convolutions on CPUs, channels-last (NHWC input, HWIO weights).

A conv is a GEMM over patches: output pixels x output channels, reducing over the kernel
window and the input channels. We tile it like the GEMMs, without materialising the patches:
`rows` neighbouring output pixels of one image row x `vectors` channel vectors of
accumulators, the window and input-channel loops around them, each step one broadcast input
scalar and `vectors` weight vectors. The zero-padded input is written once, in parallel,
before the conv; the bias add fused after it is applied to the accumulators on their write.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .common import knob, mark_root_untouchable
from .cpu_target import CpuHandRule, cpu_target
from .cpu_tiling import (
    parallel_elementwise,
    register_tile,
    register_tile_choices,
    vector_lanes,
)
from . import neon_depthwise
from .patterns import find_conv_nhwc

CONV_BLOCKS = ("conv2d_nhwc",)
SCHEDULE_RULE = "cpu_conv"


def schedule_conv_nhwc(sch: s_tir.Schedule, target: Target, tunable: bool, names: tuple[str, ...],
                       depthwise: bool = False) -> bool:
    found = find_conv_nhwc(sch, names)
    if found is None:
        return False
    pad, conv = found
    cpu = cpu_target(target)
    _, height, width, channels = (int(iv.dom.extent) for iv in sch.get(conv).iter_vars[:4])
    if depthwise and cpu.isa == "neon":
        reads = sch.get(conv).reads
        window = tuple(int(iv.dom.extent) for iv in sch.get(conv).iter_vars[4:6])
        padded, weights = ([int(d) for d in r.source.shape] for r in reads[:2])
        if neon_depthwise.fits(height, width, channels, window, padded, weights, str(sch.get(conv).writes[0].source.dtype)):
            neon_depthwise.kernel_tile(sch, pad, conv, cpu.lanes, cpu.cores)
            if tunable:
                mark_root_untouchable(sch)
            return True
    lanes = vector_lanes(channels, cpu.lanes)
    row_choices, vector_choices, (default_rows, default_vectors) = register_tile_choices(
        width, channels // lanes, cpu.vector_registers, inputs_per_vector=int(depthwise))
    # Depth-wise: unroll the kernel's columns (neighbouring outputs then share input vectors)
    # where the register file has room for them: 32 registers take the tile above. With 16
    # (NEON; convs that our kernel does not fit) the tile is one channel vector of `rows`
    # outputs whose kernel row (7 taps) is unrolled: rows + 6 input vectors, loaded once per
    # kernel row and shared by the taps, rows accumulators and a weight vector must fit (rows
    # <= 4 at 7 taps); the default tile above loaded an input vector per multiply-add.
    unroll = 2 if depthwise and cpu.vector_registers >= 32 else 0
    if depthwise and cpu.isa == "neon":
        taps = int(sch.get(sch.get_loops(conv)[-2]).extent)  # reductions: kernel rows, columns, 1 channel
        fitting = [r for r in row_choices if 2 * r + taps - 1 + 1 <= cpu.vector_registers] or [1]
        default_rows, default_vectors, vector_choices, unroll = max(fitting), 1, [1], 2
        row_choices = fitting
    register_tile(sch, conv,
                  knob(sch, row_choices, default_rows, tunable),
                  knob(sch, vector_choices, default_vectors, tunable),
                  lanes, cpu.parallel_jobs, unroll_reductions=unroll)
    if pad is not None:
        parallel_elementwise(sch, pad, cpu.lanes)
    if tunable:
        mark_root_untouchable(sch)
    return True


class ConvNhwcCpu(CpuHandRule):
    name = SCHEDULE_RULE

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> bool:
        return schedule_conv_nhwc(sch, target, tunable, CONV_BLOCKS)
