"""Relax rewrite: each oversized depth-wise conv pair -> our TE op through call_tir.

Matches `conv2d(conv2d(x, Wh), Ww)` where both are depth-wise (groups == channels), stride 1,
NCHW / OIHW, with a constant (C,1,K,1) kernel padded K//2 and a constant (C,1,1,K') kernel
padded K'//2 (odd K, K'; the output keeps the map's size): the ParC V2 `dwconv1` of every
block, with the official lengths (111/55/27/13) or resized to 2H-1, from the torch and ONNX
imports alike. The kernels are placed in the 2H-1 / 2W-1 window our op takes
(`oversized.kernel_over_map`). Anything else (the 7x7 depth-wise conv, stems, 1x1 convs) is
left as it is.

A pair becomes one call of the op (both passes), except on CUDA where a thread block cannot
stage a channel's whole map (stage 1 from 448x448 inputs): there it becomes two calls, the H
pass then the W pass, with the intermediate map in global memory.
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax.dpl import is_const, is_op, wildcard

from .errors import ParcnetError
from .graph import calls, const_value, ints, rewrite_into_primfuncs
from .oversized import choose_algo, kernel_over_map, oversized_conv, weight_constants

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves our op alone, so its schedule stays ours
PRIMFUNC_PREFIX = "oversized_conv_"  # names of our op's PrimFuncs


def _pattern():
    data, weight_h, weight_w = wildcard(), is_const(), is_const()
    conv_h = is_op("relax.nn.conv2d")(data, weight_h)
    conv_w = is_op("relax.nn.conv2d")(conv_h, weight_w)
    return conv_w, data, weight_h, weight_w, conv_h


def _same_size_depthwise_length(call, channels: int, axis: int) -> int | None:
    """K when `call` is a stride-1 depth-wise Kx1 (axis 0) or 1xK (axis 1) conv with odd K > 1
    and padding K//2 (its output keeps the map's size), in NCHW / OIHW; else None."""
    attrs = call.attrs
    shape = ints(call.args[1].ty.shape)
    if (int(attrs.groups) != channels or ints(attrs.strides) != [1, 1] or ints(attrs.dilation) != [1, 1]
            or str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
            or str(attrs.out_layout) != "NCHW" or shape[:2] != [channels, 1] or shape[3 - axis] != 1):
        return None
    length = shape[2 + axis]
    padding = [length // 2, 0] if axis == 0 else [0, length // 2]
    if length < 3 or length % 2 == 0 or ints(attrs.padding) != padding * 2:
        return None
    return length


def oversized_shape(conv_h, conv_w, data) -> tuple[int, int, int, int] | None:
    """(N, C, H, W) when the pair is a depth-wise Kx1 then 1xK' conv, each padded to keep the
    map's size (the ParC V2 `dwconv1`, official kernel lengths or resized to 2H-1), else None."""
    shape = data.ty.shape
    if shape is None or len(shape) != 4 or str(data.ty.dtype) != "float32":
        return None
    try:
        batch, channels, height, width = ints(shape)
    except TypeError:  # symbolic shape
        return None
    if _same_size_depthwise_length(conv_h, channels, 0) is None or \
            _same_size_depthwise_length(conv_w, channels, 1) is None:
        return None
    return batch, channels, height, width


def fused_passes(algo: str, height: int, width: int) -> tuple[str, ...]:
    return ("hw",)


def rewrite_oversized_convs(mod: tvm.IRModule, algo: str = "auto", func_name: str = "main",
                            target_kind: str = "llvm", passes_for=fused_passes):
    """Replace every oversized conv pair in `func_name`, with the algorithm `algo` resolves to
    for the target kind; returns (new module, count, algos used). `passes_for(algo, height,
    width)` says whether the op is one call for both passes ('hw',) or one call per pass
    ('h', 'w'): where a target's schedule cannot hold the fused op (`schedules.op_passes`)."""
    pattern, data_p, weight_h_p, weight_w_p, conv_h_p = _pattern()
    algos: list[str] = []
    refused: list[ParcnetError] = []  # raised after the rewrite: TVM would wrap it on the way out

    def rewriter(expr, matches, primfunc):
        shape = oversized_shape(matches[conv_h_p], expr, matches[data_p])
        if shape is None:
            return expr
        batch, channels, height, width = shape
        chosen = choose_algo(algo, channels, height, width, target_kind)
        try:
            passes_per_call = passes_for(chosen, height, width)
        except ParcnetError as error:
            refused.append(error)
            return expr
        weights = (kernel_over_map(const_value(matches[weight_h_p]), height),
                   kernel_over_map(const_value(matches[weight_w_p]), width))
        out = matches[data_p]
        for passes in passes_per_call:
            constants = weight_constants(chosen, passes, *weights, height, width)

            def make(passes=passes, constants=constants):
                x = te.placeholder(shape, "float32", name="x")
                taps = [te.placeholder(c.shape, "float32", name=f"taps{i}") for i, c in enumerate(constants)]
                y = oversized_conv(x, *taps, algo=chosen, passes=passes)
                return te.create_prim_func([x, *taps, y]).with_attr("op_pattern", OPAQUE)

            split = "" if passes == "hw" else f"{passes}_"
            gvar = primfunc(f"{PRIMFUNC_PREFIX}{chosen}_{split}c{channels}_h{height}_w{width}_n{batch}", make)
            out = relax.call_tir(gvar, [out, *(relax.const(c) for c in constants)],
                                 relax.TensorType(shape, "float32"))
        algos.append(chosen)
        return out

    mod = rewrite_into_primfuncs(mod, pattern, rewriter, func_name)
    if refused:
        raise refused[0]
    return mod, len(algos), algos


def count_oversized_convs(mod: tvm.IRModule, func_name: str = "main") -> int:
    """How many call_tir calls to our op `func_name` makes (for tests and logs; a pair split
    into its two passes makes two)."""
    return sum(1 for call in calls(mod[func_name], "relax.call_tir")
               if call.args[0].name_hint.startswith(PRIMFUNC_PREFIX))
