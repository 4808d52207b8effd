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
from .cpu_tiling import parallel_elementwise, register_tile, register_tile_choices, vector_lanes

CONV_BLOCKS = ("conv2d_nhwc",)
SCHEDULE_RULE = "cpu_conv"


def find_conv_nhwc(sch: s_tir.Schedule, names: tuple[str, ...]):
    """(padding block or None, conv block) when `sch` is an NHWC conv named in `names`
    (loops n, h, w, c, then three reductions), optionally after its padding block and with
    only elementwise ops over its output after it; else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [i for i, b in enumerate(blocks) if sch.get(b).name_hint in names]
    if len(found) != 1 or found[0] > 1:
        return None
    at = found[0]
    conv = blocks[at]
    stmt = sch.get(conv)
    if [iv.iter_type for iv in stmt.iter_vars] != [0, 0, 0, 0, 2, 2, 2]:
        return None
    pad = blocks[0] if at == 1 else None
    if pad is not None and (sch.get(pad).name_hint != "pad_temp" or len(sch.get(pad).reads) != 1):
        return None
    extents = [int(iv.dom.extent) for iv in stmt.iter_vars][:4]
    for block in blocks[at + 1:]:
        if [int(sch.get(loop).extent) for loop in sch.get_loops(block)] != extents:
            return None
    return pad, conv


def schedule_conv_nhwc(sch: s_tir.Schedule, target: Target, tunable: bool, names: tuple[str, ...],
                       depthwise: bool = False) -> bool:
    found = find_conv_nhwc(sch, names)
    if found is None:
        return False
    pad, conv = found
    cpu = cpu_target(target)
    _, _, width, channels = (int(iv.dom.extent) for iv in sch.get(conv).iter_vars[:4])
    lanes = vector_lanes(channels, cpu.lanes)
    row_choices, vector_choices, (default_rows, default_vectors) = register_tile_choices(
        width, channels // lanes, cpu.vector_registers, inputs_per_vector=int(depthwise))
    # Depth-wise: unroll the kernel's columns (neighbouring outputs then share input vectors)
    # where the register file has room for them (32 registers; with 16 NEON spilled them).
    unroll = 2 if depthwise and cpu.vector_registers >= 32 else 0
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
