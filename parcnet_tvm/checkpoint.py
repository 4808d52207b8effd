"""Loading official / timm-style ParCNetV2 checkpoints into our model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import ParcnetError

NESTED_KEYS = ("model", "state_dict")
MAX_LISTED = 8


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
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise ParcnetError(f"checkpoint {path} cannot be read as a PyTorch file: {exc}") from None
    state_dict = _unwrap(checkpoint)
    # DataParallel / DDP checkpoints prefix every key with 'module.'.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
