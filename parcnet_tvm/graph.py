"""Helpers the Relax graph passes share (frontend fix-ups, our op's rewrite, layout, norms)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import rewrite_call


def ints(values) -> list[int]:
    return [int(v) for v in values]


def const_value(const) -> np.ndarray:
    """A Relax constant's value (TVM 0.27 imports weights as GenericConst, with .value)."""
    holder = getattr(const, "data", None) or getattr(const, "value", None)
    return holder.numpy()


def calls(func: relax.Function, op_name: str) -> list[relax.Call]:
    """Every call of the operator `op_name` (e.g. "relax.call_tir") in `func`."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
            found.append(expr)

    relax.analysis.post_order_visit(func, visit)
    return found


def rewrite_into_primfuncs(mod: tvm.IRModule, pattern, rewriter, func_name: str = "main") -> tvm.IRModule:
    """Rewrite `func_name` where `pattern` matches, with `rewriter(expr, matches, primfunc)`
    returning the replacement. `primfunc(name, make)` gives the GlobalVar of the PrimFunc
    `make()` builds, built and added once per name: identical shapes share one PrimFunc (and
    one tuning task). Bindings left unused are removed."""
    builder = relax.BlockBuilder(mod)  # adds the PrimFuncs with typed GlobalVars
    gvars: dict[str, relax.GlobalVar] = {}

    def primfunc(name: str, make) -> relax.GlobalVar:
        if name not in gvars:
            gvars[name] = builder.add_func(make().with_attr("global_symbol", name), name)
        return gvars[name]

    new_func = rewrite_call(pattern, lambda expr, matches: rewriter(expr, matches, primfunc), mod[func_name])
    mod = builder.get()
    mod[func_name] = new_func
    return relax.transform.DeadCodeElimination([func_name])(mod)
