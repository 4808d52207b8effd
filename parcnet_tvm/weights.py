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
from .onnx_file import load_onnx_file

WEIGHT_SEED = 0  # random weights (no checkpoint) are drawn from this seed, so verify can redraw them


def prepare_model(name: str, input_size=224, checkpoint=None, resize_kernels: bool = False) -> torch.nn.Module:
    """The PyTorch model in eval mode: checkpoint weights, or random weights from WEIGHT_SEED
    drawn so that a wrong kernel anywhere shows in the output (`draw_verification_weights`).
    `resize_kernels`: the paper's 2H-1 kernels instead of the official lengths (model.py)."""
    torch.manual_seed(WEIGHT_SEED)
    model = create_model(name, input_size=input_size, resize_kernels=resize_kernels)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    else:
        draw_verification_weights(model, WEIGHT_SEED)
    return model


def model_from_manifest(manifest: dict):
    """The model a library was built from: our PyTorch model with the manifest's weights, or
    the user's ONNX file (`--onnx` builds) as onnxruntime runs it."""
    if manifest.get("onnx_file"):
        source = manifest["onnx_file"]
        if not Path(source["path"]).is_file():
            raise ParcnetError(f"ONNX file {source['path']} named in the manifest does not exist")
        if manifest_io.sha256(source["path"]) != source["sha256"]:
            raise ParcnetError(f"ONNX file {source['path']} changed since the library was built; rebuild it")
        return load_onnx_file(source["path"], manifest["input_shape"][0])
    weights = manifest["weights"]
    checkpoint = weights.get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise ParcnetError(f"checkpoint {checkpoint} named in the manifest does not exist")
        if manifest_io.sha256(checkpoint) != weights["sha256"]:
            raise ParcnetError(f"checkpoint {checkpoint} changed since the library was built; rebuild it")
    return prepare_model(manifest["model"], manifest["input_size"], checkpoint,
                         manifest.get("resize_kernels", False))
