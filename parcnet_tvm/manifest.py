"""The JSON manifest written beside every exported library (OUT.so -> OUT.json)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ParcnetError


def artifact_name(model_key: str, target: str, input_size, batch: int = 1, resize_kernels: bool = False) -> str:
    """The one name of everything made for a (model, target, size, batch): libraries
    (`build/<name>.so`), bench's cached builds (`build/bench/<name>-<build>.so`) and ONNX files
    (target `onnx`), tuning logs (`tuning_logs/<name without parcnetv2_>/`). E.g.
    parcnetv2_xt-x86-224, parcnetv2_t-cuda-224-b32, parcnetv2_xt-arm-224x320, and
    parcnetv2_xt-x86-256-resized for the paper's resized kernels."""
    height, width = input_size
    size = f"{height}" if height == width else f"{height}x{width}"
    return f"parcnetv2_{model_key}-{target}-{size}" + (f"-b{batch}" if batch != 1 else "") + \
        ("-resized" if resize_kernels else "")


def path_for(library) -> Path:
    return Path(library).with_suffix(".json")


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pipeline_fingerprint() -> str:
    """sha256 over the Python sources of the pipeline (parcnet_tvm/ and schedules/): a library
    cached by an older pipeline is rebuilt rather than measured as if it were current."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in sorted([*root.joinpath("parcnet_tvm").rglob("*.py"), *root.joinpath("schedules").glob("*.py")]):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def read(library) -> dict:
    path = path_for(library)
    if not path.is_file():
        raise ParcnetError(f"no manifest {path} beside {library}: build the library with scripts/build.py")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ParcnetError(f"manifest {path} is not valid JSON ({exc}); rebuild the library") from None


def write(library, manifest: dict) -> Path:
    """Write atomically, so an interrupted run never leaves half a manifest."""
    path = path_for(library)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
