"""Relax rewrite: each oversized depth-wise conv pair -> our TE op through call_tir.

Matches `conv2d(conv2d(x, Wh), Ww)` where both are depth-wise (groups == channels), stride 1,
NCHW / OIHW, with a constant (C,1,2H-1,1) kernel padded H-1 and a constant (C,1,1,2W-1)
kernel padded W-1: the ParC V2 `dwconv1` of every block, from the torch and ONNX imports
alike. Anything else (the 7x7 depth-wise conv, stems, 1x1 convs) is left as it is.

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
from .oversized import choose_algo, oversized_conv, weight_constants

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps leaves our op alone, so its schedule stays ours
PRIMFUNC_PREFIX = "oversized_conv_"  # names of our op's PrimFuncs


def _pattern():
    data, weight_h, weight_w = wildcard(), is_const(), is_const()
    conv_h = is_op("relax.nn.conv2d")(data, weight_h)
    conv_w = is_op("relax.nn.conv2d")(conv_h, weight_w)
    return conv_w, data, weight_h, weight_w, conv_h


def _is_depthwise(call, channels: int, kernel: tuple[int, int], padding: list[int]) -> bool:
    attrs = call.attrs
    return (
        int(attrs.groups) == channels
        and ints(attrs.strides) == [1, 1]
        and ints(attrs.dilation) == [1, 1]
        and str(attrs.data_layout) == "NCHW"
        and str(attrs.kernel_layout) == "OIHW"
        and str(attrs.out_layout) == "NCHW"
        and ints(call.args[1].ty.shape) == [channels, 1, *kernel]
        and ints(attrs.padding) == padding
    )


def oversized_shape(conv_h, conv_w, data) -> tuple[int, int, int, int] | None:
    """(N, C, H, W) when the pair is an oversized H-then-W depth-wise conv, else None."""
    shape = data.ty.shape
    if shape is None or len(shape) != 4 or str(data.ty.dtype) != "float32":
        return None
    try:
        batch, channels, height, width = ints(shape)
    except TypeError:  # symbolic shape
        return None
    h_ok = _is_depthwise(conv_h, channels, (2 * height - 1, 1), [height - 1, 0, height - 1, 0])
    w_ok = _is_depthwise(conv_w, channels, (1, 2 * width - 1), [0, width - 1, 0, width - 1])
    return (batch, channels, height, width) if h_ok and w_ok else None


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
        weights = const_value(matches[weight_h_p]), const_value(matches[weight_w_p])
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
