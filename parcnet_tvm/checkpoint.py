"""Loading ParCNetV2 weights into our model: official state dicts, training checkpoints (timm,
torchvision reference scripts, DataParallel / DDP) and Hugging Face .safetensors files."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ParcnetError

MAX_LISTED = 8
# Where training scripts keep the weights: the model's own, and the EMA copy beside them (timm:
# state_dict / state_dict_ema; DeiT, torchvision's references: model / model_ema).
PLAIN_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")
# torch.optim.swa_utils.AveragedModel (torchvision's EMA) saves its update count beside 'module.' keys.
AVERAGED_MODEL_COUNTER = "n_averaged"
# What training scripts save beside the weights (timm: the argparse Namespace of the run, metrics
# as NumPy scalars), allowed by name for torch.load(weights_only=True): never weights_only=False,
# which would run whatever code a file names.
_SCALAR = np._core.multiarray.scalar
SAFE_GLOBALS = [argparse.Namespace, np.dtype, _SCALAR, (_SCALAR, "numpy.core.multiarray.scalar"),
                *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))]
PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch.save's legacy (non-zip) format starts with a pickle
FORMATS = "a torch.save file (.pth, .pt, .pth.tar, .bin) or a .safetensors file"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    """A safetensors file starts with its JSON header's length (u64, little-endian), then '{'.
    Checked before the pickle test: that length's low byte may be 0x80 too."""
    return head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size


def _file_kind(path: Path) -> str:
    """'safetensors' or 'torch'; a ParcnetError saying what the file is otherwise (empty, text, other)."""
    if path.stat().st_size == 0:
        raise ParcnetError(f"checkpoint {path} is empty (0 bytes): give {FORMATS}")
    with open(path, "rb") as f:
        head = f.read(16)
    # By content first (a renamed file loads); the name only decides for a damaged safetensors file.
    if _looks_like_safetensors(path, head):
        return "safetensors"
    if zipfile.is_zipfile(path):
        return "torch"
    if path.suffix == ".safetensors":
        return "safetensors"
    if head.startswith(PICKLE_PROTOCOL_2_PLUS):
        return "torch"
    shown = head.decode("ascii", errors="replace").split("\n")[0][:12]
    kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a PyTorch file"
    raise ParcnetError(f"checkpoint {path} is {kind} (it starts with {shown!r}), not {FORMATS}")


def _read_torch(path: Path):
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for unreadable files
        raise ParcnetError(f"checkpoint {path} cannot be loaded safely ({_first_line(exc)}); save the state dict "
                           "alone: torch.save(model.state_dict(), PATH)") from None


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ParcnetError(f"checkpoint {path} is a .safetensors file and the safetensors package is missing: "
                           "pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:  # a damaged header, data cut short; unreadable
        raise ParcnetError(f"checkpoint {path} is not a readable .safetensors file ({_first_line(exc)}): "
                           "truncated or damaged? copy or save it again") from None


def check_finite(state_dict: dict, path) -> None:
    """Refuse weights holding NaN or Inf before anything is built from them."""
    bad = [key for key, value in sorted(state_dict.items())
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise ParcnetError(_listing(f"checkpoint {path} holds NaN or Inf in", bad)
                           + ": these weights cannot give meaningful outputs; give a checkpoint from a healthy run")


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def check_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Raise one ParcnetError listing missing keys, unexpected keys and shape mismatches.

    Oversized-kernel lengths may differ (they are resized on load), other shapes may not.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = []
    for key in sorted(set(expected) & set(state_dict)):
        want, got = tuple(expected[key].shape), tuple(getattr(state_dict[key], "shape", ()))
        if want == got:
            continue
        resizable = ".dwconv1.conv_" in key and len(got) == 4 and got[:2] == want[:2] and (
            (got[3] == 1 and want[3] == 1) or (got[2] == 1 and want[2] == 1)
        )
        if not resizable:
            mismatched.append(f"{key} checkpoint {got} vs model {want}")
    if missing or unexpected or mismatched:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        variant = getattr(getattr(model, "variant", None), "name", type(model).__name__)
        raise ParcnetError(
            f"checkpoint does not match {variant}: " + "; ".join(parts)
            + ". Check that --model names the variant the checkpoint was trained as."
        )


def _holds_tensors(value) -> bool:
    return isinstance(value, dict) and any(torch.is_tensor(v) for v in value.values())


def _contents(checkpoint: dict) -> str:
    """What a checkpoint holds, for messages: its sets of weights, then its other entries."""
    top = sum(torch.is_tensor(v) for v in checkpoint.values())
    parts = [f"{top} tensors at the top level"] if top else []
    parts += [f"{k!r} ({sum(map(torch.is_tensor, v.values()))} tensors)"
              for k, v in checkpoint.items() if _holds_tensors(v)]
    others = [str(k) for k, v in checkpoint.items() if not torch.is_tensor(v) and not _holds_tensors(v)]
    if others:
        parts.append(_listing("other entries", others))
    return "; ".join(parts)


def _ema_pair(nested: list) -> tuple[str, str] | None:
    """(plain, EMA) keys when those two are the only sets of weights, else None."""
    plain = [k for k in nested if k in PLAIN_KEYS]
    ema = [k for k in nested if k in EMA_KEYS]
    return (plain[0], ema[0]) if len(nested) == 2 and len(plain) == 1 and len(ema) == 1 else None


def select_weights(checkpoint, path, key: str | None = None) -> tuple[dict, str | None]:
    """The state dict to load from what a file holds, and a line saying which when it had a choice.

    `key` names the entry to take. Without it: the one set of weights there is (the top level's
    tensors, without entries such as 'epoch', or the one dict of tensors under a key such as
    'model'); of plain and EMA weights (state_dict / state_dict_ema, model / model_ema) the EMA
    ones, as timm's validate.py --use-ema and its published weights do. Anything else is refused
    with what the file holds, rather than guessed."""
    if not isinstance(checkpoint, dict):
        raise ParcnetError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a state dict")
    nested = [k for k, v in checkpoint.items() if _holds_tensors(v)]
    top = any(torch.is_tensor(v) for v in checkpoint.values())
    if key is not None:
        if key not in nested:
            raise ParcnetError(f"checkpoint {path} has no weights under key={key!r}; it holds {_contents(checkpoint)}")
        return checkpoint[key], None
    if top and not nested:
        return {k: v for k, v in checkpoint.items() if torch.is_tensor(v)}, None
    if len(nested) == 1 and not top:
        return checkpoint[nested[0]], None
    pair = None if top else _ema_pair(nested)
    if pair:
        plain, ema = pair
        return checkpoint[ema], (f"checkpoint {path}: loaded the EMA weights {ema!r}, not {plain!r} "
                                 f"(key={plain!r} takes those)")
    raise _no_single_choice(checkpoint, path, nested)


def _no_single_choice(checkpoint: dict, path, nested: list) -> ParcnetError:
    """The error for a file with no weights, or with several sets and no rule to pick one."""
    if not nested and not any(torch.is_tensor(v) for v in checkpoint.values()):
        return ParcnetError(f"checkpoint {path} holds no weights (no tensors): {_contents(checkpoint)}")
    example = nested[0] if nested else "model"
    return ParcnetError(f"checkpoint {path} holds several sets of weights [{_contents(checkpoint)}]: choose one with "
                        f"load_checkpoint(model, path, key=...) (e.g. key={example!r}), or save that one alone: "
                        f"torch.save(ckpt[{example!r}], PATH)")


def _strip_wrapper(state_dict: dict) -> dict:
    """DataParallel / DDP (and AveragedModel) checkpoints prefix every key with 'module.'."""
    keys = [k for k in state_dict if k != AVERAGED_MODEL_COUNTER]
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module."):]: state_dict[k] for k in keys}
    return state_dict


def load_checkpoint(model: nn.Module, path, *, key: str | None = None, log=print) -> nn.Module:
    """Load weights into `model` with strict=True, from a torch.save file (a state dict, or a training
    checkpoint: see `select_weights`, which `key` overrides) or a .safetensors file. `log` gets a
    line when the file offered a choice (EMA or plain weights) saying which was taken."""
    path = Path(path)
    if not path.is_file():
        raise ParcnetError(f"checkpoint {path} does not exist")
    read = _read_safetensors if _file_kind(path) == "safetensors" else _read_torch
    state_dict, note = select_weights(read(path), path, key)
    if note:
        log(note)
    state_dict = _strip_wrapper(state_dict)
    check_state_dict(model, state_dict)
    check_finite(state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
