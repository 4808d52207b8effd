"""ARM: each GELU of a channel split's second half, and each GELU gate, as calls of our NEON kernel.

ParC V2 splits a channels-last tensor into halves twice per block: the token mixer's GELU of
the second half (`x2 = GELU(x2)`), the MLP's gate of the first half by the GELU of the second
(`x1 * GELU(x2)`). On ARMv7 LLVM's code for the fast erf reloaded its 13 constants for every
vector and divided lane by lane (`arm_kernels/neon_gelu.cc` says why); our kernel keeps them
in registers. Each pattern becomes one call of a kernel of ours that reads the halves where
they lie in the split's input (no copy of a half) and writes a contiguous output: a parallel
loop over pixels, one kernel call per pixel's row of channels.

Matched: `split` into two equal halves on the last axis of a 4-D fp32 tensor whose halves are
whole 4-lane vectors, then `multiply(first, gelu(second))` (either order) or `gelu(second)`.
The gate is matched first, so that its GELU is not taken alone. Only where GELU uses the fast
erf (not with exact maths), only for ARM: x86's LLVM code keeps the constants in its 32
registers and divides by vector.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, te, tirx
from tvm.relax.dpl import is_op, is_tuple_get_item, wildcard

from .graph import calls, ints, rewrite_into_primfuncs

GELU_SYMBOL, GATE_SYMBOL = "parcnet_gelu_rows", "parcnet_gelu_gate_rows"
PRIMFUNC_PREFIX = "neon_gelu_"
KERNEL_RULE = "neon_gelu"  # how `schedules.schedule_kernels` reports these kernels
LANES = 4


def fits(shape, dtype: str) -> bool:
    """A 4-D fp32 tensor of a known shape whose two channel halves are whole 4-lane vectors."""
    dims = getattr(shape, "values", None)  # a ShapeExpr; None for an unknown or symbolic shape
    return (dtype == "float32" and dims is not None and len(dims) == 4
            and all(isinstance(n, tvm.tirx.IntImm) for n in dims) and int(dims[-1]) % (2 * LANES) == 0)


def gelu_rows(shape, gated: bool) -> tirx.PrimFunc:
    """The kernel for a split's input of `shape` (N, H, W, 2C): out (N, H, W, C) = GELU of the
    second half, times the first half if `gated`. A parallel loop over pixels, a kernel call each."""
    batch, height, width, channels = (int(n) for n in shape)
    half, pixels = channels // 2, batch * height * width
    x = te.placeholder((batch, height, width, channels), "float32", name="x")

    def body(ins, outs):
        source, out = ins[0], outs[0]
        pixel = tirx.Var("pixel", "int32")
        second = source.access_ptr("r", offset=half)
        gate = [source.access_ptr("r"), channels] if gated else []
        call = tirx.call_extern("int32", GATE_SYMBOL if gated else GELU_SYMBOL, out.access_ptr("w"), half,
                                second, channels, *gate, pixel, 1, half)
        return tirx.For(pixel, 0, pixels, tirx.ForKind.PARALLEL, tirx.Evaluate(call))

    out = te.extern((batch, height, width, half), [x], body, name="gelu_gate" if gated else "gelu", dtype="float32")
    func = te.create_prim_func([x, out])
    # Under a root block like every other kernel (code that looks for one finds it), and scheduled
    # as it is (FuseOps leaves an extern op alone; tuning extracts no task from it).
    root = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", func.body))
    return func.with_body(root).with_attrs({"tirx.is_scheduled": True, "parcnet_kernel": KERNEL_RULE})


def _patterns():
    source = wildcard()
    halves = is_op("relax.split")(source)
    first, second = is_tuple_get_item(halves, 0), is_tuple_get_item(halves, 1)
    gelu = is_op("relax.nn.gelu")(second)
    gate = is_op("relax.multiply")(first, gelu) | is_op("relax.multiply")(gelu, first)
    return gate, gelu, source, halves


def _halves_of(split: relax.Call, source: relax.Expr) -> bool:
    """Whether `split` cuts `source` into two equal halves on its last axis."""
    attrs, shape = split.attrs, source.ty.shape
    if not fits(shape, str(source.ty.dtype)) or int(attrs.axis) not in (-1, 3):
        return False
    cut = attrs.indices_or_sections
    return ints(cut) == [int(shape[-1]) // 2] if isinstance(cut, (list, tvm.ir.Array)) else int(cut) == 2


def rewrite_gelus(mod: tvm.IRModule, func_name: str = "main") -> tuple[tvm.IRModule, int, int]:
    """Replace every GELU gate, then every GELU of a half left, in `func_name` with a call of our
    kernel; returns (new module, gates, GELUs) replaced."""
    gate_p, gelu_p, source_p, halves_p = _patterns()
    counts = {True: 0, False: 0}

    def rewriter_for(gated: bool):
        def rewriter(expr, matches, primfunc):
            source = matches[source_p]
            if not _halves_of(matches[halves_p], source):
                return expr
            shape = ints(source.ty.shape)
            batch, height, width, channels = shape  # named like our op's kernels: breakdown.py groups by name
            name = f"{PRIMFUNC_PREFIX}{'gate_' if gated else ''}c{channels // 2}_h{height}_w{width}_n{batch}"
            gvar = primfunc(name, lambda: gelu_rows(shape, gated))
            counts[gated] += 1
            return relax.call_tir(gvar, [source], relax.TensorType(shape[:-1] + [shape[-1] // 2], "float32"))
        return rewriter

    mod = rewrite_into_primfuncs(mod, gate_p, rewriter_for(True), func_name)
    mod = rewrite_into_primfuncs(mod, gelu_p, rewriter_for(False), func_name)
    return mod, counts[True], counts[False]


def count_gelu_kernels(mod: tvm.IRModule, func_name: str = "main") -> int:
    """How many call_tir calls to our GELU kernels `func_name` makes."""
    return sum(1 for call in calls(mod[func_name], "relax.call_tir")
               if call.args[0].name_hint.startswith(PRIMFUNC_PREFIX))
