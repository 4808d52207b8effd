"""LayerNormGeneral as one op: one kernel, one pass over each token's channels.

The imported norm is eight Relax ops (mean, subtract, square, sum, sqrt, clip (maximum
from ONNX), divide, scale). TVM's FuseOps does not fuse a reduction into another, so it became three kernels
that read the activations three times and write them twice. Here each such chain is
replaced with one TE op over the last axis (channels-last: a token's channels are
contiguous), whose two reductions and output the tuner can compute token by token.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te
from tvm.relax.dpl import is_const, is_op, wildcard

from .graph import const_value, ints, rewrite_into_primfuncs

PRIMFUNC_PREFIX = "layer_norm_general_"


def layer_norm_general(x: te.Tensor, weight: te.Tensor, eps: float) -> te.Tensor:
    """(x - mean) / max(||x - mean||_2, eps) * weight over the last axis of 4-D `x`."""
    channels = tvm.tirx.const(int(x.shape[-1]), "float32")
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    sums = te.compute(x.shape[:-1], lambda n, h, w: te.sum(x[n, h, w, k], axis=k), name="norm_sums")

    def centred(n, h, w, c):
        return x[n, h, w, c] - sums[n, h, w] / channels

    j = te.reduce_axis((0, x.shape[-1]), name="j")
    squares = te.compute(x.shape[:-1], lambda n, h, w: te.sum(centred(n, h, w, j) * centred(n, h, w, j), axis=j),
                         name="norm_squares")
    return te.compute(
        x.shape,
        lambda n, h, w, c: centred(n, h, w, c) / te.max(te.sqrt(squares[n, h, w]), tvm.tirx.const(eps, "float32"))
        * weight[c],
        name="norm_out")


def _pattern():
    x, weight, low, high, floor = wildcard(), is_const(), wildcard(), wildcard(), is_const()
    mean = is_op("relax.mean")(x)
    centred = is_op("relax.subtract")(x, mean)
    total = is_op("relax.sum")(is_op("relax.multiply")(centred, centred))
    norm = is_op("relax.sqrt")(total)
    # clamp_min(eps): `clip(norm, eps, inf)` from torch.export, `maximum(norm, eps)` from ONNX
    # (its Clip becomes Max in frontend.clip_to_max_min)
    clamped = is_op("relax.clip")(norm, low, high) | is_op("relax.maximum")(norm, floor)
    out = is_op("relax.multiply")(is_op("relax.divide")(centred, clamped), weight)
    return out, x, weight, mean, total, low, high, floor


def _epsilon(matches, low_p, high_p, floor_p) -> float | None:
    """The clamp's eps when it is a positive lower bound only, else None."""
    if floor_p in matches:
        value = const_value(matches[floor_p])
        eps = float(value.reshape(())) if value.size == 1 else None
        return eps if eps is not None and eps > 0 else None
    bounds = [getattr(matches[p], "value", None) for p in (low_p, high_p)]  # float immediates in TVM 0.27
    if not all(isinstance(b, float) for b in bounds) or not math.isinf(bounds[1]) or bounds[0] <= 0:
        return None
    return bounds[0]


def _last_axis_only(call: relax.Call, rank: int) -> bool:
    axes = call.attrs.axis
    return axes is not None and len(axes) == 1 and int(axes[0]) % rank == rank - 1 and bool(call.attrs.keepdims)


def fuse_layer_norms(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int]:
    """Replace every LayerNormGeneral chain over the last axis of a 4-D float32 tensor; returns
    (module, how many)."""
    pattern, x_p, weight_p, mean_p, total_p, low_p, high_p, floor_p = _pattern()
    replaced = 0

    def rewriter(expr, matches, primfunc):
        nonlocal replaced
        x = matches[x_p]
        shape = x.ty.shape
        if shape is None or len(shape) != 4 or str(x.ty.dtype) != "float32":
            return expr
        eps = _epsilon(matches, low_p, high_p, floor_p)
        if eps is None:
            return expr
        if not (_last_axis_only(matches[mean_p], 4) and _last_axis_only(matches[total_p], 4)):
            return expr
        dims = ints(shape)
        if ints(matches[weight_p].ty.shape) != dims[-1:]:
            return expr

        def make():
            data = te.placeholder(dims, "float32", name="x")
            weight = te.placeholder(dims[-1:], "float32", name="weight")
            return te.create_prim_func([data, weight, layer_norm_general(data, weight, eps)])

        # a C identifier (CUDA names the kernel after it): 1e-06 -> 1em06
        epsilon = f"{eps:g}".replace("-", "m").replace(".", "p")
        gvar = primfunc(f"{PRIMFUNC_PREFIX}{'x'.join(map(str, dims))}_eps{epsilon}", make)
        replaced += 1
        return relax.call_tir(gvar, [x, matches[weight_p]], relax.TensorType(dims, "float32"))

    return rewrite_into_primfuncs(mod, pattern, rewriter, func_name), replaced
