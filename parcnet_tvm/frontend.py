"""PyTorch -> Relax, through torch.export (default) or through ONNX.

Both paths give a module whose `main` takes the NCHW image and returns the logits as a
single tensor, with the weights bound as constants.
"""

from __future__ import annotations

import io
import warnings

import torch
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple, rewrite_call, wildcard

from .errors import ParcnetError
from .graph import const_value
from .onnx_file import OnnxFileModel

FRONTENDS = ("torch", "onnx")
ONNX_OPSET = 17


def from_torch(model: torch.nn.Module, input_shape) -> tvm.IRModule:
    """torch.export the model and import it into Relax with weights as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    example = torch.zeros(input_shape, dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation noise
        exported = torch.export.export(model.eval(), (example,))
        return from_exported_program(exported, keep_params_as_input=False, unwrap_unit_return_tuple=True)


def export_onnx(model: torch.nn.Module, input_shape):
    """Export to an in-memory ONNX model (TorchScript exporter, opset 17)."""
    import onnx

    buffer = io.BytesIO()
    example = torch.zeros(input_shape, dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input"], output_names=["logits"],
        )
    return onnx.load_from_string(buffer.getvalue())


def clip_to_max_min(onnx_model) -> int:
    """Rewrite every Clip(x, lo, hi) as Min(Max(x, lo), hi); returns how many were rewritten.

    LayerNormGeneral's clamp_min(eps) exports as Clip(x, eps) with no max, and TVM 0.27's
    ONNX Clip converter fails on it (emit_te needs a ShapeExpr shape; see shared notes).
    Max/Min convert to plain relax maximum/minimum and compute the same function.
    """
    from onnx import helper

    graph = onnx_model.graph
    nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "Clip" or any(a.name in ("min", "max") for a in node.attribute):
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (3 - len(node.input))
        value = inputs[0]
        for slot, op_type in ((1, "Max"), (2, "Min")):
            if inputs[slot]:
                out = f"{node.output[0]}__{op_type.lower()}"
                nodes.append(helper.make_node(op_type, [value, inputs[slot]], [out], name=f"{node.name}_{op_type}"))
                value = out
        nodes.append(helper.make_node("Identity", [value], [node.output[0]], name=f"{node.name}_out"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def from_onnx(model: torch.nn.Module, input_shape) -> tvm.IRModule:
    """torch.onnx.export the model and import the ONNX graph."""
    return from_onnx_proto(export_onnx(model, input_shape), {"input": list(input_shape)})


def from_onnx_proto(onnx_model, shape_dict: dict) -> tvm.IRModule:
    """An ONNX graph with static shapes -> Relax: Clip rewritten, two-way Max/Min as maximum/minimum."""
    from tvm.relax.frontend.onnx import from_onnx as relax_from_onnx

    clip_to_max_min(onnx_model)
    mod = relax_from_onnx(onnx_model, shape_dict=shape_dict, keep_params_in_input=False)
    return two_way_max_as_maximum(mod)


def import_onnx_file(onnx_file: OnnxFileModel) -> tvm.IRModule:
    """A user's ONNX export (batch fixed, shapes folded by onnx_file.load_onnx_file) -> Relax."""
    mod = from_onnx_proto(onnx_file.proto, {onnx_file.input_name: list(onnx_file.input_shape)})
    return square_as_multiply(mod)


def two_way_max_as_maximum(mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
    """max(stack((a, b)), axis 0) -> maximum(a, b), and the same for min: TVM's ONNX importer
    writes a two-input Max/Min as a 5-D stack, which TVM's ConvertLayout cannot handle."""
    a, b = wildcard(), wildcard()
    # the importer broadcasts each input to the common shape first; maximum broadcasts itself
    a_in = is_op("relax.broadcast_to")(a, wildcard()) | a
    b_in = is_op("relax.broadcast_to")(b, wildcard()) | b
    stacked = is_op("relax.stack")(is_tuple([a_in, b_in]))
    for reduce_op, binary in (("relax.max", relax.op.maximum), ("relax.min", relax.op.minimum)):
        pattern = is_op(reduce_op)(stacked)

        def rewriter(expr, matches, binary=binary):
            axes = expr.attrs.axis
            if axes is None or [int(x) for x in axes] != [0] or int(matches[stacked].attrs.axis) != 0 \
                    or expr.attrs.keepdims:
                return expr
            return binary(matches[a], matches[b])

        mod[func_name] = rewrite_call(pattern, rewriter, mod[func_name])
    return mod


def import_model(model: torch.nn.Module, input_shape, frontend: str = "torch") -> tvm.IRModule:
    """Import `model` for a fixed input shape through the named frontend."""
    if frontend == "torch":
        return square_as_multiply(from_torch(model, input_shape))
    if frontend == "onnx":
        return square_as_multiply(from_onnx(model, input_shape))
    raise ParcnetError(f"unknown frontend {frontend!r}: choose one of {', '.join(FRONTENDS)}")


def square_as_multiply(mod: tvm.IRModule, func_name: str = "main") -> tvm.IRModule:
    """power(x, 2) -> x * x. LayerNormGeneral squares with `pow(2)`, and on an H200 the CUDA
    kernel TVM made of power + sum returned NaN for negative x: every CUDA library (TVM's
    default build too) was off by ~1.4. x * x is exact and cheaper on every target."""
    base, exponent = wildcard(), is_const()
    pattern = is_op("relax.power")(base, exponent)

    def rewriter(expr, matches):
        value = const_value(matches[exponent])
        if value.size == 1 and float(value.reshape(())) == 2.0:
            return relax.op.multiply(matches[base], matches[base])
        return expr

    mod[func_name] = rewrite_call(pattern, rewriter, mod[func_name])
    return mod

