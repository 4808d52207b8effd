"""api.py: the Python API as README documents it (compile, load, the predictor), used alone."""

import numpy as np
import pytest
import torch
from support import SMALL, needs_arm_toolchain, pil_eval_preprocess, write_test_image

import parcnet_tvm as pt


def test_compile_load_and_call_gives_pytorchs_logits(xt_checkpoint_x86, tmp_path):
    """Only the documented API: a PyTorch model's weights, compiled for x86 at 64 (pt.compile,
    in the session's fixture), loaded and called on an array and on an image (preprocessed by
    the manifest's contract)."""
    model, _, built = xt_checkpoint_x86
    assert built.library.is_file() and built.manifest_path.is_file()
    assert built.manifest["verification"]["status"] == "passed"

    predictor = pt.load(built.library, threads=1)
    x = np.random.default_rng(3).standard_normal((1, 3, SMALL, SMALL)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(predictor(x) - expected).max() <= 1e-4

    image = write_test_image(tmp_path / "photo.png", 100, 80)
    with torch.no_grad():
        from_pil = model(torch.from_numpy(pil_eval_preprocess(image, [SMALL, SMALL], 73)[None])).numpy()
    logits = predictor(image)
    assert np.abs(logits - from_pil).max() <= 1e-4
    top = predictor.top(logits)
    assert [index for index, _, _ in top] == [int(i) for i in (-from_pil[0]).argsort(kind="stable")[:5]]
    assert all(name == predictor.class_names[index] and name for index, name, _ in top)

    with pytest.raises(pt.ParcnetError, match=r"takes float32 \[1, 3, 64, 64\]"):
        predictor(np.zeros((1, 3, 32, 32), np.float32))


@needs_arm_toolchain
def test_an_arm_library_runs_on_the_emulated_board(xt_arm):
    from parcnet_tvm.verify import reference_output
    from parcnet_tvm.weights import model_from_manifest

    library, manifest = xt_arm
    x = np.random.default_rng(4).standard_normal(manifest["input_shape"]).astype(np.float32)
    logits = pt.load(library)(x)
    assert np.abs(logits - reference_output(model_from_manifest(manifest), x)).max() <= 1e-4


def test_the_api_names_stay_the_functions_after_the_jobs_are_imported():
    """No submodule shares a name of the API: importing the tune job (as pt.tune does) leaves
    pt.tune the function, so a second call still works."""
    import importlib

    import parcnet_tvm as pt
    from parcnet_tvm import api

    importlib.import_module("parcnet_tvm.tune_job")
    for name in ("compile", "load", "tune"):
        assert getattr(pt, name) is getattr(api, name) and callable(getattr(pt, name))
