"""The PyTorch model a library is built from and checked against: a checkpoint's weights, or
random weights redrawn from a fixed seed (so that verification, timing, benchmarks and the
ARM bundle's check can rebuild exactly the model a manifest names)."""

from __future__ import annotations

from pathlib import Path

import torch

from . import manifest as manifest_io
from .checkpoint import load_checkpoint
from .errors import ParcnetError
from .model import create_model, draw_verification_weights

WEIGHT_SEED = 0  # random weights (no checkpoint) are drawn from this seed, so verify can redraw them


def prepare_model(name: str, input_size=224, checkpoint=None) -> torch.nn.Module:
    """The PyTorch model in eval mode: checkpoint weights, or random weights from WEIGHT_SEED
    drawn so that a wrong kernel anywhere shows in the output (`draw_verification_weights`)."""
    torch.manual_seed(WEIGHT_SEED)
    model = create_model(name, input_size=input_size)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    else:
        draw_verification_weights(model, WEIGHT_SEED)
    return model


def model_from_manifest(manifest: dict) -> torch.nn.Module:
    weights = manifest["weights"]
    checkpoint = weights.get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise ParcnetError(f"checkpoint {checkpoint} named in the manifest does not exist")
        if manifest_io.sha256(checkpoint) != weights["sha256"]:
            raise ParcnetError(f"checkpoint {checkpoint} changed since the library was built; rebuild it")
    return prepare_model(manifest["model"], manifest["input_size"], checkpoint)
