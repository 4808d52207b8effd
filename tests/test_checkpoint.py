"""checkpoint.py: official / timm-style state dicts load strictly, or fail listing every problem."""

import argparse

import numpy as np
import pytest
import torch
from support import random_state

from parcnet_tvm import ParcnetError, create_model, load_checkpoint


@pytest.mark.parametrize("nesting", [None, "model", "state_dict"])
def test_checkpoint_round_trip(tmp_path, nesting):
    model = create_model("xt", 64)
    state = random_state(model)
    path = tmp_path / "ckpt.pth"
    torch.save(state if nesting is None else {nesting: state, "epoch": 3}, path)
    loaded = load_checkpoint(create_model("xt", 64), path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 64, 64)
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_mismatch_lists_every_problem(tmp_path):
    state = create_model("xt", 64).state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ParcnetError) as err:
        load_checkpoint(create_model("xt", 64), path)
    message = str(err.value)
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "norm.weight checkpoint (7,) vs model (320,)" in message
    with pytest.raises(ParcnetError, match="does not exist"):
        load_checkpoint(create_model("xt", 64), tmp_path / "nope.pth")


def test_checkpoint_of_another_variant_is_rejected(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(create_model("t", 64).state_dict(), path)
    with pytest.raises(ParcnetError, match="shape mismatches"):
        load_checkpoint(create_model("xt", 64), path)


def test_training_checkpoints_load_with_their_run_arguments(tmp_path):
    """timm-style training scripts save the run's argparse Namespace and NumPy metrics beside the
    weights: allowed by name, without weights_only=False."""
    state = random_state(create_model("xt", 64))
    path = tmp_path / "checkpoint-7.pth.tar"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3, model="parcnetv2_xt"), "epoch": 7,
                "metric": np.float64(81.2), "arch": "parcnetv2_xt"}, path)
    loaded = load_checkpoint(create_model("xt", 64), path)
    assert torch.equal(loaded.head.bias, state["head.bias"])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": random_state(create_model("xt", 64)), "payload": _RunsCode()}, path)
    with pytest.raises(ParcnetError, match="cannot be loaded safely.*torch.save\\(model.state_dict"):
        load_checkpoint(create_model("xt", 64), path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty \\(0 bytes\\)"),
    (b"epoch 7, top-1 81.2\n", "is a text file \\(it starts with 'epoch 7, top'\\)"),
    (b"\x00\x01\x02\x03binary", "is not a PyTorch file"),
])
def test_files_that_are_not_checkpoints_say_what_they_are(content, message, tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ParcnetError, match=message):
        load_checkpoint(create_model("xt", 64), path)


def test_weights_with_nan_or_inf_are_refused_before_any_build(tmp_path):
    state = random_state(create_model("xt", 64))
    state["head.bias"][3] = float("nan")
    state["norm.weight"][0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(ParcnetError, match="holds NaN or Inf in \\(2\\): head.bias, norm.weight"):
        load_checkpoint(create_model("xt", 64), path)
