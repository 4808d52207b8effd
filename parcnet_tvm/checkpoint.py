"""Loading official / timm-style ParCNetV2 checkpoints into our model."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ParcnetError

NESTED_KEYS = ("model", "state_dict")
MAX_LISTED = 8
# What training scripts save beside the weights (timm: the argparse Namespace of the run, metrics
# as NumPy scalars), allowed by name for torch.load(weights_only=True): never weights_only=False,
# which would run whatever code a file names.
_SCALAR = np._core.multiarray.scalar
SAFE_GLOBALS = [argparse.Namespace, np.dtype, _SCALAR, (_SCALAR, "numpy.core.multiarray.scalar"),
                *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool"))]
PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch.save's legacy (non-zip) format starts with a pickle


def _not_a_checkpoint(path: Path) -> str | None:
    """Why `path` is plainly not a torch.save file (empty, text, another format), or None."""
    size = path.stat().st_size
    if size == 0:
        raise ParcnetError(f"checkpoint {path} is empty (0 bytes): give the .pth/.pt file torch.save wrote")
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(PICKLE_PROTOCOL_2_PLUS):
        return None
    shown = head.decode("ascii", errors="replace").split("\n")[0][:12]
    kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a PyTorch file"
    return f"checkpoint {path} is {kind} (it starts with {shown!r}), not what torch.save writes"


def check_finite(state_dict: dict, path) -> None:
    """Refuse weights holding NaN or Inf before anything is built from them."""
    bad = [key for key, value in sorted(state_dict.items())
           if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise ParcnetError(_listing(f"checkpoint {path} holds NaN or Inf in", bad)
                           + ": these weights cannot give meaningful outputs; give a checkpoint from a healthy run")


def _unwrap(checkpoint) -> dict:
    """Return the state dict itself: plain, or nested under 'model' / 'state_dict'."""
    if not isinstance(checkpoint, dict):
        raise ParcnetError(f"checkpoint holds a {type(checkpoint).__name__}, expected a state dict")
    for key in NESTED_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


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


def load_checkpoint(model: nn.Module, path) -> nn.Module:
    """Load a checkpoint file (plain state dict, or under 'model' / 'state_dict') with strict=True."""
    path = Path(path)
    if not path.is_file():
        raise ParcnetError(f"checkpoint {path} does not exist")
    reason = _not_a_checkpoint(path)
    if reason:
        raise ParcnetError(reason)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParcnetError(f"checkpoint {path} cannot be loaded safely ({first[:300]}); save the state dict "
                           "alone: torch.save(model.state_dict(), PATH)") from None
    state_dict = _unwrap(checkpoint)
    # DataParallel / DDP checkpoints prefix every key with 'module.'.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    check_state_dict(model, state_dict)
    check_finite(state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
