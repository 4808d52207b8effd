"""ARM 7x7 depth-wise convs on our NEON kernel (parcnet_tvm/arm_kernels/neon_depthwise.cc).

The kernel adds, to 7 neighbouring outputs of one row and one channel vector, their whole
7 x 7 window, holding the 7 outputs and a kernel row's 7 weights in registers while the 13
input vectors of that row stream through: 20 loads per 49 multiply-adds, where LLVM's code
for the tile before (2 outputs, kernel row unrolled) loaded 1.1 per multiply-add.

Walk: parallel over (line of 16 channels: one 64-byte cache line of every pixel, band of
output rows); per job the line's weights are copied to a buffer of their own (3 KB; in HWIO
layout, taps a pixel apart, the 49 taps of a channel vector at C = 512 fell in 4 of the L1's
128 sets); then output rows, groups of 7 outputs, the line's 4 channel vectors: one kernel
call each, and the write of its 7 outputs with the fused add and gate. The padded input
copy keeps its pixels an odd number of cache lines apart (storage_align), so that a call's 91
input vectors spread over the L1's sets: with C a multiple of 64 they fell in a few sets and
most of them missed (T's depth-wise convs: 3.9M L1 misses at 1 thread, 0.45M aligned).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .common import frames_without_source
from .cpu_tiling import elementwise_consumers, parallel_elementwise

TAPS, OUTPUTS, LANES = 7, 7, 4  # the kernel: a 7 x 7 window, 7 outputs, one 4-lane vector
LINE_VECTORS = 4                 # channel vectors per 64-byte cache line
SYMBOL = "parcnet_dwconv_7x7_x7"
INTRINSIC = "parcnet_neon_dwconv_7x7_x7"


def fits(height: int, width: int, channels: int, window: tuple[int, int], padded_shape, weights_shape,
         dtype: str = "float32") -> bool:
    """Whether an NHWC depth-wise conv is made of whole kernel calls: fp32, a 7 x 7 window at
    stride 1 over a padded (N, H + 6, W + 6, C) input, widths of whole groups of 7 outputs, whole
    channel vectors, HWIO weights (7, 7, 1, C)."""
    return (dtype == "float32" and window == (TAPS, TAPS) and width % OUTPUTS == 0 and channels % LANES == 0
            and list(padded_shape[1:]) == [height + TAPS - 1, width + TAPS - 1, channels]
            and list(weights_shape) == [TAPS, TAPS, 1, channels])


def _functions():
    span = OUTPUTS + TAPS - 1

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (1, TAPS, span, LANES), "float32", offset_factor=1)
        B = T.match_buffer(b, (TAPS, TAPS, 1, LANES), "float32", offset_factor=1, scope="local")
        C = T.match_buffer(c, (1, 1, OUTPUTS, LANES), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0, 0, 0:OUTPUTS, 0:LANES], A[0, 0:TAPS, 0:span, 0:LANES], B[0:TAPS, 0:TAPS, 0, 0:LANES])
            T.writes(C[0, 0, 0:OUTPUTS, 0:LANES])
            # (the conv's third reduction, over the one input channel of a group, has extent 1)
            for x, lane, ry, rx in T.grid(OUTPUTS, LANES, TAPS, TAPS):
                with T.sblock("update"):
                    vx, vl, vry, vrx = T.axis.remap("SSRR", [x, lane, ry, rx])
                    C[0, 0, vx, vl] = C[0, 0, vx, vl] + A[0, vry, vx + vrx, vl] * B[vry, vrx, 0, vl]

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        a0, a_row, a_pixel = T.int32(), T.int32(), T.int32()
        b0, b_row, b_tap = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (1, TAPS, span, LANES), "float32", offset_factor=1, strides=[a0, a_row, a_pixel, 1])
        B = T.match_buffer(b, (TAPS, TAPS, 1, LANES), "float32", offset_factor=1, strides=[b_row, b_tap, b0, 1],
                           scope="local")
        c0, c1 = T.int32(), T.int32()
        # The kernel reads and writes the 7 outputs as 28 contiguous floats: lowering checks it.
        C = T.match_buffer(c, (1, 1, OUTPUTS, LANES), "float32", offset_factor=1, scope="local",
                           strides=[c0, c1, LANES, 1])
        with T.sblock("root"):
            T.reads(C[0, 0, 0:OUTPUTS, 0:LANES], A[0, 0:TAPS, 0:span, 0:LANES], B[0:TAPS, 0:TAPS, 0, 0:LANES])
            T.writes(C[0, 0, 0:OUTPUTS, 0:LANES])
            T.evaluate(T.call_extern("int32", SYMBOL, C.access_ptr("rw"), A.access_ptr("r"),
                                     T.Cast("int32", a_row), T.Cast("int32", a_pixel),
                                     B.access_ptr("r"), T.Cast("int32", b_row), T.Cast("int32", b_tap)))

    return description, implementation


def kernel_tile(sch: s_tir.Schedule, pad, conv, lanes: int, cores: int) -> None:
    """Schedule the conv (loops n, y, x, c, ry, rx, rc; `fits` holds) onto the kernel: parallel
    over (channel line, band of output rows), at least 2 per core; per job the line's weights
    copied to a buffer of their own (3 KB for 16 channels), then per output row, group of 7
    outputs and channel vector of the line, one kernel call and the write of its 7 outputs with
    the fused ops."""
    n, y, x, c, ry, rx, rc = sch.get_loops(conv)
    height, channels = int(sch.get(y).extent), int(sch.get(c).extent)
    line = LINE_VECTORS if channels % (LINE_VECTORS * LANES) == 0 else 1
    lines = channels // (line * LANES)
    bands = min((d for d in range(1, height + 1) if height % d == 0 and lines * d >= 2 * cores), default=height)
    y_bands, y = sch.split(y, [bands, None])
    x_groups, x_inner = sch.split(x, [None, OUTPUTS])
    c_lines, c_vectors, c_lanes = sch.split(c, [None, line, LANES])
    sch.reorder(n, c_lines, y_bands, y, x_groups, c_vectors, x_inner, c_lanes, ry, rx, rc)
    sch.fuse(rx, rc)  # the unit loop over a group's one input channel: the kernel has none
    jobs = sch.fuse(n, c_lines, y_bands)
    sch.parallel(jobs)
    # Taps are a pixel (C floats) apart in the weights: at C = 512 the 49 taps of a channel
    # vector fall in 4 of the L1's 128 sets. Copied, they are 64 bytes apart.
    weights = sch.cache_read(conv, 1, "local")
    sch.compute_at(weights, jobs)
    sch.vectorize(sch.get_loops(weights)[-1])
    accumulators = sch.cache_write(conv, 0, "local")
    for consumer in elementwise_consumers(sch, accumulators):
        sch.reverse_compute_inline(consumer)
    sch.reverse_compute_at(accumulators, c_vectors)
    init = sch.decompose_reduction(conv, x_inner)
    for block in (init, accumulators):
        sch.vectorize(sch.get_loops(block)[-1])
    sch.tensorize(sch.get_loops(conv)[-4], INTRINSIC)
    if pad is not None:
        # The padded copy's pixels an odd number of cache lines apart (C rounded up to 16 more
        # than a multiple of 32 floats: 48 stays, 64 -> 80): with C a multiple of 64 the 91
        # input vectors of a kernel call fell in a few L1 sets and most of them missed (~60
        # misses per call at 56 x 56 x 64, ~4 once aligned: a simulated 32 KB 4-way L1).
        sch.storage_align(pad, 0, axis=2, factor=32, offset=16)
        parallel_elementwise(sch, pad, lanes)


# Registered on import (one intrinsic, fixed shape): a tuning log's traces name it when replayed.
with frames_without_source():
    TensorIntrin.register(INTRINSIC, *_functions(), override=True)
