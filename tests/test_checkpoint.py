"""checkpoint.py: official / timm-style state dicts, training checkpoints and .safetensors files
load strictly, or fail in one line listing every problem."""

import argparse
import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support import random_state
from torch.optim.swa_utils import AveragedModel

from parcnet_tvm import ParcnetError, create_model, load_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tests copy and compare ~30 MB of weights: on a busy machine torch's worker threads only
    wait on each other (4x the wall time measured on 2 loaded cores). Restored for the other files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def _template():
    return create_model("xt", 64)


@pytest.fixture
def xt(_template):
    """Fresh XT models, copied: creating one (its init) takes seconds on a busy 2-core machine."""
    return lambda: copy.deepcopy(_template)


@pytest.fixture(scope="module")
def states(_template):
    """Two different state dicts of XT's shapes (the plain and the EMA weights), drawn once."""
    plain = random_state(_template, seed=1)
    return plain, {k: v * 0.5 + 0.01 for k, v in plain.items()}


@pytest.mark.parametrize("nesting", [None, "model", "state_dict"])
def test_checkpoint_round_trip(tmp_path, xt, states, nesting):
    model, state = xt(), states[0]
    path = tmp_path / "ckpt.pth"
    torch.save(state if nesting is None else {nesting: state, "epoch": 3}, path)
    loaded = load_checkpoint(xt(), path)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(1, 3, 64, 64)
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_mismatch_lists_every_problem(tmp_path, xt):
    state = xt().state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ParcnetError) as err:
        load_checkpoint(xt(), path)
    message = str(err.value)
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "norm.weight checkpoint (7,) vs model (320,)" in message
    with pytest.raises(ParcnetError, match="does not exist"):
        load_checkpoint(xt(), tmp_path / "nope.pth")


def test_checkpoint_of_another_variant_is_rejected(tmp_path, xt):
    path = tmp_path / "t.pth"
    torch.save(create_model("t", 64).state_dict(), path)
    with pytest.raises(ParcnetError, match="shape mismatches"):
        load_checkpoint(xt(), path)


def test_training_checkpoints_load_with_their_run_arguments(tmp_path, xt, states):
    """timm-style training scripts save the run's argparse Namespace and NumPy metrics beside the
    weights: allowed by name, without weights_only=False."""
    state = states[0]
    path = tmp_path / "checkpoint-7.pth.tar"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3, model="parcnetv2_xt"), "epoch": 7,
                "metric": np.float64(81.2), "arch": "parcnetv2_xt"}, path)
    loaded = load_checkpoint(xt(), path)
    assert torch.equal(loaded.head.bias, state["head.bias"])


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, xt, states):
    path = tmp_path / "evil.pth"
    torch.save({"model": states[0], "payload": _RunsCode()}, path)
    with pytest.raises(ParcnetError, match="cannot be loaded safely.*torch.save\\(model.state_dict"):
        load_checkpoint(xt(), path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty \\(0 bytes\\)"),
    (b"epoch 7, top-1 81.2\n", "is a text file \\(it starts with 'epoch 7, top'\\)"),
    (b"\x00\x01\x02\x03binary", "is not a PyTorch file"),
])
def test_files_that_are_not_checkpoints_say_what_they_are(content, message, tmp_path, xt):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ParcnetError, match=message):
        load_checkpoint(xt(), path)


def test_weights_with_nan_or_inf_are_refused_before_any_build(tmp_path, xt, states):
    state = {k: v.clone() for k, v in states[0].items()}  # the shared draw stays finite
    state["head.bias"][3] = float("nan")
    state["norm.weight"][0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(ParcnetError, match="holds NaN or Inf in \\(2\\): head.bias, norm.weight"):
        load_checkpoint(xt(), path)


def _assert_loaded(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def _module(state):
    """Keys as DataParallel / DDP save them."""
    return {f"module.{k}": v for k, v in state.items()}


def _optimizer_state(model):
    """An AdamW state after one step (of the head alone: small): tensors nested under 'state'."""
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    for p in model.head.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return optimizer.state_dict()


def test_timm_training_checkpoint_loads_its_ema_weights_and_says_so(tmp_path, xt, states):
    """timm's train.py: state_dict and state_dict_ema (here under DDP's 'module.'), the optimizer,
    the run's Namespace, metrics. The EMA weights are taken (validate.py --use-ema), key= picks."""
    model, (plain, ema) = xt(), states
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 299, "arch": "parcnetv2_xt", "state_dict": _module(plain), "state_dict_ema": _module(ema),
                "optimizer": _optimizer_state(model), "args": argparse.Namespace(model_ema=True, lr=1e-3),
                "version": 2, "metric": np.float64(81.2)}, path)
    said = []
    _assert_loaded(load_checkpoint(xt(), path, log=said.append), ema)
    assert len(said) == 1 and "EMA weights 'state_dict_ema', not 'state_dict'" in said[0]
    _assert_loaded(load_checkpoint(xt(), path, key="state_dict", log=said.append), plain)
    assert len(said) == 1  # an explicit key is a choice already made


def test_torchvision_checkpoint_with_averaged_model_ema(tmp_path, xt, states):
    """torchvision's reference train.py: model, model_ema (an AveragedModel: 'module.' keys and
    n_averaged), optimizer, lr_scheduler, epoch, args."""
    model, (plain, ema) = xt(), states
    model.load_state_dict(ema)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": plain, "model_ema": AveragedModel(model).state_dict(), "optimizer": _optimizer_state(model),
                "lr_scheduler": {"last_epoch": 5}, "epoch": 5, "args": argparse.Namespace(lr=0.5)}, path)
    said = []
    _assert_loaded(load_checkpoint(xt(), path, log=said.append), ema)
    assert "EMA weights 'model_ema', not 'model'" in said[0]


def test_plain_state_dict_with_module_prefixes_and_extra_entries(tmp_path, xt, states):
    """The state dict at the top level, saved from DDP, with the epoch and accuracy beside it."""
    state = states[0]
    path = tmp_path / "resnet-style.pth"
    torch.save({**_module(state), "epoch": 90, "best_acc1": 76.1}, path)
    _assert_loaded(load_checkpoint(xt(), path), state)


def test_safetensors_round_trip(tmp_path, xt, states):
    state = states[0]
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    _assert_loaded(load_checkpoint(xt(), path), state)
    renamed = tmp_path / "model.bin"  # told apart by its content, not its name
    renamed.write_bytes(path.read_bytes())
    _assert_loaded(load_checkpoint(xt(), renamed), state)


@pytest.mark.parametrize("keep", [4, 100, -10])
def test_truncated_safetensors_is_one_line(tmp_path, xt, states, keep):
    path = tmp_path / "model.safetensors"
    save_file(states[0], path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ParcnetError, match="is not a readable .safetensors file .*truncated or damaged") as err:
        load_checkpoint(xt(), path)
    assert "\n" not in str(err.value)


def test_several_sets_of_weights_are_refused_naming_the_keys(tmp_path, xt, states):
    student, teacher = states
    path = tmp_path / "distilled.pth"
    torch.save({"state_dict": student, "teacher": teacher, "epoch": 3}, path)
    with pytest.raises(ParcnetError) as err:
        load_checkpoint(xt(), path)
    message, n = str(err.value), len(student)
    assert f"several sets of weights ['state_dict' ({n} tensors); 'teacher' ({n} tensors); other entries (1): epoch]" \
        in message
    assert "key=" in message and "\n" not in message
    _assert_loaded(load_checkpoint(xt(), path, key="teacher"), teacher)
    with pytest.raises(ParcnetError, match="no weights under key='ema'; it holds 'state_dict'"):
        load_checkpoint(xt(), path, key="ema")


def test_a_file_without_weights_says_what_it_holds(tmp_path, xt):
    path = tmp_path / "optimizer-only.pth"
    torch.save({"optimizer": _optimizer_state(xt()), "epoch": 3}, path)
    with pytest.raises(ParcnetError, match=r"holds no weights \(no tensors\): other entries \(2\): optimizer, epoch"):
        load_checkpoint(xt(), path)
