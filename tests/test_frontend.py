"""torch.export and ONNX imports (ours and a user's ONNX file) compute the same function as
PyTorch, and get the same graph passes."""

import numpy as np
import tvm
from support import SMALL, slow

from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.frontend import (
    clip_to_max_min,
    export_onnx,
    import_model,
    import_onnx_file,
)
from parcnet_tvm.onnx_file import load_onnx_file
from parcnet_tvm.pipeline import compile_relax, fused_module, report
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import (
    load_vm,
    pytorch_output,
    reference_input,
    run_vm,
    verify_library,
)
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


def test_official_export_builds_on_our_op_and_matches_onnxruntime(official_export, tmp_path):
    manifest = build_library(BuildRequest(onnx=str(official_export), batch=2, output=str(tmp_path / "xt.so")),
                             log=lambda *_: None)
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["reference"].startswith("onnxruntime")
    assert manifest["input_shape"] == [2, 3, SMALL, SMALL] and manifest["frontend"] == "onnx-file"
    assert manifest["graph_passes"]["oversized_pairs"] == 17
    assert manifest["graph_passes"]["layer_norms_fused"] == 38
    # one PrimFunc of our op per stage shape (called 17 times), scheduled by our rule
    assert len(manifest["kernel_schedules"].get("oversized_conv", [])) == 4
    # the manifest names the file, so verify.py rechecks the library against it
    assert verify_library(tmp_path / "xt.so")["status"] == "passed"


def test_onnx_and_torch_imports_get_the_same_graph_passes(official_export):
    x86 = get_target("x86")
    from_torch = report(fused_module(import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL)), x86))
    from_onnx = report(fused_module(import_onnx_file(load_onnx_file(official_export)), x86))
    assert from_torch == from_onnx
    assert from_torch["oversized_pairs"] == 17 and from_torch["layer_norms_fused"] == 38


