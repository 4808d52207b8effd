"""torch.export and ONNX imports compute the same function as PyTorch."""

import numpy as np
import tvm
from support import SMALL, slow

from parcnet_tvm.frontend import clip_to_max_min, export_onnx, import_model
from parcnet_tvm.pipeline import compile_relax
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import load_vm, pytorch_output, reference_input, run_vm
from parcnet_tvm.weights import prepare_model


def test_onnx_export_has_clip_without_max_and_we_rewrite_it():
    model = prepare_model("xt", SMALL)
    onnx_model = export_onnx(model, (1, 3, SMALL, SMALL))
    clips = [n for n in onnx_model.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) < 3 or not n.input[2] for n in clips)  # clamp_min(eps): no max
    assert clip_to_max_min(onnx_model) == len(clips)
    assert not [n for n in onnx_model.graph.node if n.op_type == "Clip"]


@slow  # the official export's build (below) checks the ONNX path's numerics in the default run
def test_torch_and_onnx_imports_agree_with_pytorch():
    shape = (1, 3, SMALL, SMALL)
    model = prepare_model("xt", SMALL)
    x = reference_input(shape)
    expected = pytorch_output(model, x)
    named = get_target("x86")
    outputs = {}
    for frontend in ("torch", "onnx"):
        mod = import_model(model, shape, frontend)
        assert len(mod["main"].params) == 1  # weights are constants, the image is the only input
        outputs[frontend] = run_vm(load_vm(compile_relax(mod, named), tvm.cpu()), x, tvm.cpu())
        assert np.abs(outputs[frontend] - expected).max() <= 1e-4, frontend
    assert np.abs(outputs["torch"] - outputs["onnx"]).max() <= 1e-4
