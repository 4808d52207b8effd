"""onnx_file.py: a user's ONNX export as the model to build from: batch fixed, run-time shape
arithmetic folded, bad files refused with one clear error."""

import onnx
import pytest
from support import SMALL

from parcnet_tvm import ParcnetError
from parcnet_tvm.build import BuildRequest, build_library
from parcnet_tvm.onnx_file import load_onnx_file


def test_official_export_needs_its_shape_arithmetic_folded(official_export):
    ops = {node.op_type for node in onnx.load(str(official_export)).graph.node}
    assert {"Shape", "Gather"} <= ops  # chunk(2) on a dynamic batch: split points computed at run time
    folded = load_onnx_file(official_export, batch=2)
    assert folded.input_shape == (2, 3, SMALL, SMALL)
    assert not {"Shape", "Gather"} & {node.op_type for node in folded.proto.graph.node}


def test_onnx_file_problems_get_one_clear_error(official_export, tmp_path):
    with pytest.raises(ParcnetError, match="does not exist"):
        load_onnx_file(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ParcnetError, match="cannot be read as an ONNX model"):
        load_onnx_file(tmp_path / "text.onnx")
    with pytest.raises(ParcnetError, match="drop --checkpoint"):
        build_library(BuildRequest(onnx=str(official_export), checkpoint="x.pth"))


def test_a_fixed_batch_export_builds_only_at_its_batch(tmp_path):
    from parcnet_tvm.frontend import export_onnx
    from parcnet_tvm.weights import prepare_model

    path = tmp_path / "static.onnx"
    onnx.save(export_onnx(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL)), str(path))
    assert load_onnx_file(path, batch=1).input_shape == (1, 3, SMALL, SMALL)
    with pytest.raises(ParcnetError, match="fixed batch of 1: build it with --batch 1"):
        load_onnx_file(path, batch=2)
