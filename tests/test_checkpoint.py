"""checkpoint.py: official / timm-style state dicts load strictly, or fail listing every problem."""

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
