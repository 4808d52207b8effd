"""The JSON manifest written beside every exported library (OUT.so -> OUT.json)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import outputs
from .errors import ParcnetError


def artifact_name(model_key: str, target: str, input_size, batch: int = 1, resize_kernels: bool = False) -> str:
    """The one name of everything made for a (model, target, size, batch): libraries
    (`build/<name>.so`), bench's cached builds (`build/bench/<name>-<build>.so`) and ONNX files
    (target `onnx`), tuning logs (`<cache>/tuning/<name without parcnetv2_>/<device>/`, shipped ones in `tuning_logs/`). E.g.
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
    """sha256 over the sources of the pipeline (parcnet_tvm/ and schedules/, our NEON kernels
    included): a library cached by an older pipeline is rebuilt rather than measured as if it
    were current."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    package = root.joinpath("parcnet_tvm")
    for source in sorted([*package.rglob("*.py"), *package.joinpath("arm_kernels").glob("*.cc"),
                          *root.joinpath("schedules").glob("*.py")]):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


# What every reader of a manifest needs; anything else is optional.
REQUIRED_KEYS = ("library", "model", "input_shape", "input_size", "target_name", "target", "sha256", "weights")


def read(library) -> dict:
    library = Path(library)
    path = path_for(library)
    if not library.is_file():
        raise ParcnetError(f"library {library} does not exist: build it with scripts/build.py")
    if not path.is_file():
        raise ParcnetError(f"no manifest {path} beside {library}: build the library with scripts/build.py")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParcnetError(f"manifest {path} is not valid JSON ({exc}): rebuild the library") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise ParcnetError(f"manifest {path} lacks {', '.join(missing)}: it was edited or not written by "
                           "scripts/build.py; rebuild the library")
    return manifest


def is_ours(path) -> bool:
    """Whether `path` holds a manifest this pipeline wrote (so it may be replaced)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "pipeline" in data and "library" in data


def check_writable_folder(folder, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (a file in the way,
    no permission)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ParcnetError(f"cannot write {what} into {folder}: {existing} is a file, not a folder; "
                           "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ParcnetError(f"cannot write {what} into {folder}: {existing} is not writable; choose another path")


def check_output(library) -> None:
    """An output library path we may write: not a manifest's name, not a folder, in a writable
    folder, and with no foreign file where its manifest goes."""
    library = Path(library)
    if library.suffix == ".json":
        raise ParcnetError(f"-o {library} names a manifest: give the library's path (e.g. "
                           f"{library.with_suffix('.so')}); its manifest is written beside it")
    if library.is_dir():
        raise ParcnetError(f"-o {library} is a folder: give the library's file path (e.g. {library}/model.so)")
    check_writable_folder(library.parent, "the library")
    manifest = path_for(library)
    if manifest.exists() and not is_ours(manifest):
        raise ParcnetError(f"{manifest} exists and is not a manifest of ours: refusing to overwrite it; "
                           "choose another -o")


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def write(library, manifest: dict) -> Path:
    """Written whole or not at all (outputs.py): an interrupted run never leaves half a manifest."""
    return outputs.write_text(path_for(library), dumps(manifest))
