"""Whole-graph layout: channels-last (NHWC) from the stem to the head.

ParCNetV2 carries its activations channels-last between blocks, but its token mixer and
downsampling convolutions run channels-first, so the imported graph transposes twice per
block and once more per stage. We run every convolution channels-last instead:

1. TVM's ConvertLayout turns each NCHW conv2d into NHWC (HWIO kernels) and moves the
   elementwise ops, splits and reductions around them along;
2. every 1x1 convolution becomes a plain GEMM (tokens x C_in) @ (C_in x C_out), the same
   form as the channel BGU's Linear layers: tuned, that form ran ~2x faster per FLOP than
   the NCHW 1x1 conv here (T stage 3, 64 trials each: 226 vs 107 GFLOP/s); on ARM the stem
   and downsampling convs become GEMMs too, over im2col patches, so that every dense conv
   runs on the NEON GEMM micro-kernel;
3. the residual adds move next to the GEMMs that produce their operand, so they fuse in as
   epilogues;
4. a transpose after a sum moves onto the operand that needs it, and back-to-back
   transposes are composed: the ones that cancel disappear.

What is left is one transpose of the input image, and two per block around our oversized
op, whose kernels and schedules are written for NCHW (see README: a channels-last version
of the op is the next step).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .graph import calls, const_value, ints

CONV_LAYOUT = ["NHWC", "HWIO"]


def _is_pointwise_nhwc(call: relax.Call) -> bool:
    attrs = call.attrs
    kernel = call.args[1].ty.shape
    return (str(attrs.data_layout) == "NHWC" and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.out_layout) == "NHWC" and int(attrs.groups) == 1
            and ints(attrs.strides) == [1, 1] and ints(attrs.padding) == [0, 0, 0, 0]
            and ints(attrs.dilation) == [1, 1] and kernel is not None and ints(kernel)[:2] == [1, 1])


def _convs_to_matmul(func: relax.Function, replace) -> relax.Function:
    """Rewrite each conv2d [+ bias] with `replace(conv call, input, bias or None)`, which gives
    the GEMM form or None (left as it is). The bias is added to the GEMM's (tokens, O) result,
    so that it fuses into the GEMM as its epilogue (after a reshape it would not)."""
    data, bias = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(data, wildcard())
    with_bias = is_op("relax.add")(conv, bias)

    def rewrite_with_bias(expr, matches):
        bias_shape = ints(matches[bias].ty.shape)
        if bias_shape[-1:] != ints(expr.ty.shape)[-1:] or any(d != 1 for d in bias_shape[:-1]):
            return expr
        replaced = replace(matches[conv], matches[data], matches[bias])
        return expr if replaced is None else replaced

    def rewrite_plain(expr, matches):
        replaced = replace(expr, matches[data], None)
        return expr if replaced is None else replaced

    func = rewrite_call(with_bias, rewrite_with_bias, func)
    return rewrite_call(conv, rewrite_plain, func)


def _gemm_as_conv(tokens, weights, bias, output_shape: list[int]):
    """tokens @ weights [+ bias], reshaped to the conv's NHWO output."""
    product = relax.op.matmul(tokens, weights)
    if bias is not None:
        product = relax.op.add(product, relax.op.reshape(bias, output_shape[-1:]))
    return relax.op.reshape(product, output_shape)


def pointwise_convs_to_matmul(func: relax.Function) -> relax.Function:
    """conv2d_1x1(x: NHWC, w: 11IO) [+ bias] -> reshape(x, (NHW, I)) @ reshape(w, (I, O)) [+ bias],
    reshaped back to NHWO."""

    def replace(call, data, bias):
        if not _is_pointwise_nhwc(call) or call.ty.shape is None:
            return None
        batch, height, width, out_channels = ints(call.ty.shape)
        in_channels = ints(call.args[1].ty.shape)[2]
        tokens = relax.op.reshape(data, [batch * height * width, in_channels])
        weights = relax.op.reshape(call.args[1], [in_channels, out_channels])
        return _gemm_as_conv(tokens, weights, bias, ints(call.ty.shape))

    return _convs_to_matmul(func, replace)


def _is_dense_nhwc(call: relax.Call) -> bool:
    attrs = call.attrs
    return (str(attrs.data_layout) == "NHWC" and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.out_layout) == "NHWC" and int(attrs.groups) == 1
            and ints(attrs.dilation) == [1, 1] and call.ty.shape is not None
            and isinstance(call.args[1], tvm.ir.expr.Constant) and not _is_pointwise_nhwc(call))


def strided_convs_to_matmul(func: relax.Function, depth_multiple: int) -> relax.Function:
    """conv2d_KxK(x: NHWC, w: constant HWIO) [+ bias], groups 1 (the stem and downsampling
    convs) -> im2col(x) @ w as a (K*K*I, O) matrix [+ bias], reshaped back to NHWO. im2col is
    strided slices of the padded input, one per kernel tap, concatenated along channels (one
    fused copy kernel); the reduction is padded with zero columns and zero weight rows to a
    multiple of `depth_multiple` (the ARM GEMM micro-kernel's reduction step), so that kernel
    computes these convs too."""

    def im2col(call: relax.Call, x):
        batch, out_h, out_w, _ = ints(call.ty.shape)
        kernel_h, kernel_w, in_channels, _ = ints(call.args[1].ty.shape)
        top, left, bottom, right = ints(call.attrs.padding)
        stride_h, stride_w = ints(call.attrs.strides)
        padded = relax.op.nn.pad(x, [0, 0, top, bottom, left, right, 0, 0]) if top + left + bottom + right else x
        taps = [relax.op.strided_slice(padded, axes=[1, 2], begin=[kh, kw],
                                       end=[kh + stride_h * (out_h - 1) + 1, kw + stride_w * (out_w - 1) + 1],
                                       strides=[stride_h, stride_w])
                for kh in range(kernel_h) for kw in range(kernel_w)]
        depth = kernel_h * kernel_w * in_channels
        extra = -depth % depth_multiple
        if extra:
            taps.append(relax.const(np.zeros((batch, out_h, out_w, extra), "float32")))
        columns = relax.op.concat(taps, axis=3)
        return relax.op.reshape(columns, [batch * out_h * out_w, depth + extra]), depth + extra

    def replace(call, data, bias):
        if not _is_dense_nhwc(call):
            return None
        out_channels = ints(call.ty.shape)[-1]
        tokens, depth = im2col(call, data)
        kernel = const_value(call.args[1]).reshape(-1, out_channels)
        kernel = np.concatenate([kernel, np.zeros((depth - kernel.shape[0], out_channels), kernel.dtype)])
        return _gemm_as_conv(tokens, relax.const(kernel), bias, ints(call.ty.shape))

    return _convs_to_matmul(func, replace)


def fold_transposes(func: relax.Function) -> relax.Function:
    """permute_dims(permute_dims(x, a), b) -> permute_dims(x, a[b]); identity permutes -> x."""
    inner_data = wildcard()
    inner = is_op("relax.permute_dims")(inner_data)
    outer = is_op("relax.permute_dims")(inner)
    single_data = wildcard()
    single = is_op("relax.permute_dims")(single_data)

    def axes(call: relax.Call, rank: int) -> list[int]:
        given = call.attrs.axes
        return list(range(rank))[::-1] if given is None else ints(given)

    def compose(expr, matches):
        rank = len(expr.ty.shape)
        first, second = axes(matches[inner], rank), axes(expr, rank)
        combined = [first[i] for i in second]
        source = matches[inner_data]
        return source if combined == list(range(rank)) else relax.op.permute_dims(source, combined)

    def drop_identity(expr, matches):
        rank = len(expr.ty.shape)
        return matches[single_data] if axes(expr, rank) == list(range(rank)) else expr

    func = rewrite_call(outer, compose, func)
    return rewrite_call(single, drop_identity, func)


def transposes_after_elementwise(func: relax.Function) -> relax.Function:
    """permute_dims(a + permute_dims(b, q), p) -> permute_dims(a, p) + b when q then p is the
    identity: the sum is taken in the layout `b` already has (around our NCHW op, this
    leaves one transpose of its output instead of one of the other operand and one back)."""
    a, b = wildcard(), wildcard()
    inner = is_op("relax.permute_dims")(b)
    pattern = is_op("relax.permute_dims")(is_op("relax.add")(a, inner) | is_op("relax.add")(inner, a))

    def rewriter(expr, matches):
        rank = len(expr.ty.shape)
        outer_axes, inner_axes = ints(expr.attrs.axes or []), ints(matches[inner].attrs.axes or [])
        if len(outer_axes) != rank or len(inner_axes) != rank or \
                [inner_axes[i] for i in outer_axes] != list(range(rank)):
            return expr
        if ints(matches[a].ty.shape) != ints(matches[inner].ty.shape):
            return expr  # a broadcast: keep it as it is
        return relax.op.add(relax.op.permute_dims(matches[a], outer_axes), matches[b])

    return rewrite_call(pattern, rewriter, func)


def adds_into_gemm_epilogues(func: relax.Function) -> relax.Function:
    """a + reshape(x @ w, NHWC) -> reshape(reshape(a, 2-D) + x @ w, NHWC): the residual add
    after pwconv2 and after the BGU's fc2 then fuses into the GEMM as its epilogue (TVM fuses
    elementwise ops after a GEMM, not a reshape and then an add), which saves one pass over
    the activations per residual. Reshapes of whole tensors are free views in the VM."""
    other, product = wildcard(), is_op("relax.matmul")(wildcard(), wildcard())
    unflatten = is_op("relax.reshape")(product, wildcard())
    pattern = is_op("relax.add")(other, unflatten) | is_op("relax.add")(unflatten, other)

    def rewriter(expr, matches):
        shape = expr.ty.shape
        gemm = matches[product]
        if shape is None or gemm.ty.shape is None or matches[other].ty.shape is None:
            return expr
        full, flat = ints(shape), ints(gemm.ty.shape)
        if ints(matches[other].ty.shape) != full or len(flat) != 2 or flat[-1] != full[-1]:
            return expr  # a broadcast add (a bias) or another reshape: leave it
        residual = relax.op.reshape(matches[other], flat)
        first_is_gemm = expr.args[0].same_as(matches[unflatten])
        summed = relax.op.add(gemm, residual) if first_is_gemm else relax.op.add(residual, gemm)
        return relax.op.reshape(summed, full)

    return rewrite_call(pattern, rewriter, func)


def to_channels_last(mod: tvm.IRModule, func_name: str = "main", im2col_depth_multiple: int | None = None) -> tvm.IRModule:
    """The steps above, then constant folding (the kernels' new layouts are computed
    once, here) and dead-code removal. `im2col_depth_multiple` (ARM): the other dense convs
    become GEMMs too, through im2col, their reduction padded to that multiple
    (`strided_convs_to_matmul`)."""
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": CONV_LAYOUT})(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    mod = relax.transform.FoldConstant()(mod)  # biases and HWIO kernels become plain constants
    func = mod[func_name]
    func = pointwise_convs_to_matmul(func)
    if im2col_depth_multiple:
        func = strided_convs_to_matmul(func, im2col_depth_multiple)
    for step in (fold_transposes, adds_into_gemm_epilogues, transposes_after_elementwise,
                 fold_transposes, fold_transposes):  # composing can expose another pair
        func = step(func)
    mod[func_name] = func
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.DeadCodeElimination([func_name])(mod)


def count_transposes(mod: tvm.IRModule, func_name: str = "main") -> int:
    """permute_dims calls on activations (not constants) in `func_name`."""
    return sum(1 for call in calls(mod[func_name], "relax.permute_dims")
               if not isinstance(call.args[0], tvm.ir.expr.Constant))
