"""verify.py: a library against the model it was built from, twice; the first wrong kernel."""

import json
import re

import numpy as np
import pytest
import torch
from support import SMALL, one_line, run_script, script_main

from parcnet_tvm import ParcnetError
from parcnet_tvm.manifest import sha256
from parcnet_tvm.params import path_for as weights_path
from parcnet_tvm.targets import get_target
from parcnet_tvm.verify import verify_library
from parcnet_tvm.weights import prepare_model


def test_verify_script_rechecks_library(xt_small_x86):
    library, _ = xt_small_x86
    done = run_script("verify.py", library)
    assert done.returncode == 0, done.stderr
    assert "matches PyTorch" in done.stdout


def test_verify_rejects_changed_library(xt_small_x86, tmp_path):
    library, manifest = xt_small_x86
    copy = tmp_path / "copy.so"
    copy.write_bytes(library.read_bytes() + b"\0")
    (tmp_path / "copy.json").write_text(json.dumps(manifest))
    with pytest.raises(ParcnetError, match="changed since it was built"):
        verify_library(copy)


def test_verification_fails_loudly_on_mismatch(xt_small_x86, tmp_path, monkeypatch):
    """A library whose weights differ from the PyTorch model is caught by verify."""
    library, manifest = xt_small_x86
    other = dict(manifest)
    checkpoint = tmp_path / "other.pth"
    state = prepare_model("xt", SMALL).state_dict()
    state["head.bias"] = state["head.bias"] + 0.01
    torch.save(state, checkpoint)
    other["weights"] = {"checkpoint": str(checkpoint), "sha256": sha256(checkpoint), "seed": None}
    copy = tmp_path / "lib.so"
    copy.write_bytes(library.read_bytes())
    weights_path(copy).write_bytes(weights_path(library).read_bytes())
    (tmp_path / "lib.json").write_text(json.dumps(other))
    with pytest.raises(ParcnetError, match="does not match PyTorch: max abs error") as caught:
        script_main("verify.py")(copy)
    one_line(caught.value)
    assert json.loads((tmp_path / "lib.json").read_text())["verification"]["status"] == "failed"


def test_verification_runs_two_inputs_and_catches_a_stale_output(xt_small_x86, monkeypatch):
    """Verification calls the library twice on different inputs: a library that answered the
    second call with its first result (a CUDA graph replaying a captured input) fails."""
    from parcnet_tvm import verify

    library, manifest = xt_small_x86
    assert manifest["verification"]["calls"] == 2
    model, named = prepare_model("xt", SMALL), get_target("x86")
    assert verify.verify_against(model, library, named, manifest["input_shape"])["status"] == "passed"
    first = {}
    real_run_vm = verify.run_vm

    def stale_run_vm(vm, x, device):
        return first.setdefault("out", real_run_vm(vm, x, device))

    monkeypatch.setattr(verify, "run_vm", stale_run_vm)
    result = verify.verify_against(model, library, named, manifest["input_shape"])
    assert result["status"] == "failed" and result["input_seed"] == verify.INPUT_SEED + 1


def test_default_weights_let_verification_see_a_wrong_oversized_conv():
    """Without a checkpoint the weights are drawn so that every layer moves the output: an
    oversized conv with its H and W kernels swapped in every block (within 1e-4 of the right
    output under the official init's weights) is off by far more than the tolerance."""
    from parcnet_tvm.verify import TOLERANCE, pytorch_output, reference_input

    model = prepare_model("xt", SMALL)
    x = reference_input(model.input_shape())
    expected = pytorch_output(model, x)
    with torch.no_grad():
        for stage in model.stages:
            for block in stage:
                conv = block.token_mixer.dwconv1
                kernel_h = conv.conv_h.weight.clone()
                conv.conv_h.weight.copy_(conv.conv_w.weight.reshape(kernel_h.shape))
                conv.conv_w.weight.copy_(kernel_h.reshape(conv.conv_w.weight.shape))
    assert np.abs(pytorch_output(model, x) - expected).max() > 100 * TOLERANCE


def test_first_divergence_names_the_wrong_kernel_or_the_overwritten_buffer():
    from parcnet_tvm.verify import first_divergence

    def call(name, inputs, output_before, output_after):
        return {"name": name, "before": [*inputs, output_before], "after": [*inputs, output_after]}

    a, b, c = (np.full(4, v, np.float32) for v in (1.0, 2.0, 3.0))
    garbage = np.full(4, 7.0, np.float32)
    reference = [call("k0", [a], np.zeros(4, np.float32), b), call("k1", [b], np.zeros(4, np.float32), c)]
    same = [call("k0", [a], garbage, b), call("k1", [b], garbage, c)]  # output memory differs before: fine
    assert first_divergence(same, reference) is None
    wrong_kernel = [call("k0", [a], garbage, b), call("k1", [b], garbage, c + 1)]
    found = first_divergence(wrong_kernel, reference)
    assert (found["index"], found["name"], found["cause"]) == (1, "k1", "kernel")
    clobbered = [call("k0", [a], garbage, b), call("k1", [b + 1], garbage, c)]  # k1's input changed
    assert first_divergence(clobbered, reference)["cause"] == "inputs"
    nan = [call("k0", [a], garbage, np.full(4, np.nan, np.float32)), reference[1]]
    assert first_divergence(nan, reference)["index"] == 0
    assert first_divergence(reference[:1], reference)["cause"] == "different kernels"


def test_a_manifest_that_does_not_fit_its_library_is_reported_and_not_rewritten(xt_small_x86, tmp_path):
    """A hand-edited manifest (another input shape) is not "wrong numbers": verify says the two do
    not fit, and leaves the manifest as it found it."""
    library, manifest = xt_small_x86
    copy = tmp_path / "lib.so"
    copy.write_bytes(library.read_bytes())
    weights_path(copy).write_bytes(weights_path(library).read_bytes())
    edited = {**manifest, "input_shape": [1, 3, 96, 96], "input_size": [96, 96]}
    (tmp_path / "lib.json").write_text(json.dumps(edited))
    before = (tmp_path / "lib.json").read_text()
    with pytest.raises(ParcnetError, match=re.escape("cannot run on input [1, 3, 96, 96]")) as caught:
        script_main("verify.py")(copy)
    assert "rebuild it" in one_line(caught.value)
    assert (tmp_path / "lib.json").read_text() == before
    del edited["target_name"]
    (tmp_path / "lib.json").write_text(json.dumps(edited))
    with pytest.raises(ParcnetError, match="lacks target_name") as caught:
        script_main("verify.py")(copy)
    one_line(caught.value)
