"""PyTorch -> Relax, through torch.export (default) or through ONNX.

Both paths give a module whose `main` takes the NCHW image and returns the logits as a
single tensor, with the weights bound as constants.
"""

from __future__ import annotations

import io
import warnings

import torch
import tvm

from .errors import ParcnetError

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
    """torch.onnx.export the model, rewrite Clip, and import it into Relax."""
    from tvm.relax.frontend.onnx import from_onnx as relax_from_onnx

    onnx_model = export_onnx(model, input_shape)
    clip_to_max_min(onnx_model)
    mod = relax_from_onnx(onnx_model, shape_dict={"input": list(input_shape)}, keep_params_in_input=False)
    return mod


def import_model(model: torch.nn.Module, input_shape, frontend: str = "torch") -> tvm.IRModule:
    """Import `model` for a fixed input shape through the named frontend."""
    if frontend == "torch":
        return from_torch(model, input_shape)
    if frontend == "onnx":
        return from_onnx(model, input_shape)
    raise ParcnetError(f"unknown frontend {frontend!r}: choose one of {', '.join(FRONTENDS)}")
