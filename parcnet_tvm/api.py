"""The Python API: compile a model into a verified library, load a library and call it, tune.

    import parcnet_tvm as pt
    built = pt.compile("xt", target="x86", input_size=224)     # or an ONNX file's path
    model = pt.load(built.library)
    logits = model("cat.jpg")                                   # or a float32 NCHW array
    print(model.top(logits))                                    # [(index, name, logit), ...]

The scripts (build.py, tune.py) are thin command lines over the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import manifest as manifest_io
from .errors import ParcnetError


@dataclass(frozen=True)
class Compiled:
    """A built and verified library: its path and its manifest (also in library.json)."""
    library: Path
    manifest: dict = field(repr=False)

    @property
    def manifest_path(self) -> Path:
        return manifest_io.path_for(self.library)


def _onnx_file(model) -> str | None:
    """A model argument naming an ONNX export (a path ending in .onnx, or any existing file
    that is not a variant's name), or None for a variant."""
    from .model import variant_key

    if str(model).lower().endswith(".onnx"):
        return str(model)
    try:
        variant_key(str(model))
        return None
    except ParcnetError:
        return str(model) if Path(str(model)).is_file() else None


def compile(model="xt", *, target: str = "x86", input_size=224, batch: int = 1, tuning_logs=(),
            output=None, checkpoint=None, any_device: bool = False, log=None, **options) -> Compiled:
    """Build `model` (xt, t, s, b, or the path of an ONNX export ending in .onnx) for `target`
    (x86, arm, cuda), verify it against PyTorch (onnxruntime for an ONNX file) and return where
    it is. `tuning_logs`: folders written by tune() to apply (only records of this device,
    unless `any_device`). `options`: any other field of build.BuildRequest (frontend=,
    exact_math=, cuda_arch=, ...). Raises ParcnetError, with the fix in its message, on bad input."""
    from .build import BuildRequest, build_library

    onnx = options.pop("onnx", None) or _onnx_file(model)
    request = BuildRequest(model="xt" if onnx else str(model), target=target, input_size=input_size, batch=batch,
                           onnx=onnx, checkpoint=str(checkpoint) if checkpoint else None,
                           output=str(output) if output else None, tuning_log=tuning_logs, any_device=any_device,
                           **options)
    manifest = build_library(request, log=log or (lambda *_: None))
    return Compiled(request.output_path(), manifest)


def tune(model="xt", *, target: str = "x86", input_size=224, batch: int = 1, time_budget: float | None = None,
         trials: int | None = None, work_dir=None, output=None, log=print, **options) -> Compiled:
    """Tune `model` on this machine (or a board: rpc_tracker=, rpc_key=) with MetaSchedule into a
    tuning log (default: a folder per model and device in the cache, outside the checkout),
    then build and verify the tuned library. `time_budget` in minutes; `options`: any other
    field of tune.TuneRequest (only=, warm_start=, compare=, seed=, ...)."""
    from .tune_job import TuneRequest, tune_model

    onnx = options.pop("onnx", None) or _onnx_file(model)
    request = TuneRequest(model="xt" if onnx else str(model), target=target, input_size=input_size, batch=batch,
                          onnx=onnx, time_budget=time_budget, trials=trials,
                          work_dir=str(work_dir) if work_dir else None, output=str(output) if output else None,
                          **options)
    result = tune_model(request, log=log)
    return Compiled(Path(result["library"]), result["manifest"])


class Predictor:
    """A loaded library: call it on a float32 array of its input shape, or on an image (path
    or PIL image) preprocessed by the manifest's input contract; it returns the logits.
    ARM libraries run on the emulated board (qemu): right numbers, not the board's speed."""

    def __init__(self, library, threads: int | None = None):
        self.library = Path(library)
        self.manifest = manifest_io.read(self.library)
        self.input_shape = tuple(self.manifest["input_shape"])
        self.output_shape = tuple(self.manifest.get("output", {}).get("shape") or ())
        self.threads = threads
        self.target = self.manifest["target_name"]
        self._vm = self._device = None
        if self.target != "arm":
            from .targets import get_target
            from .verify import load_vm

            self._device = get_target(self.target).device()
            self._vm = load_vm(self.library, self._device, threads)

    @cached_property
    def class_names(self) -> list[str]:
        from .input_contract import CLASS_NAMES, class_names

        named = self.manifest.get("output", {}).get("class_names")
        return class_names() if named == CLASS_NAMES.name else []

    def preprocess(self, image) -> np.ndarray:
        """An image (path or PIL image) -> the model's input array, the image in every batch entry."""
        from .input_contract import preprocess_image

        if "input" not in self.manifest:
            raise ParcnetError(f"{manifest_io.path_for(self.library)} has no input contract: rebuild the library")
        one = preprocess_image(image, self.manifest["input"])
        return np.ascontiguousarray(np.broadcast_to(one, self.input_shape), dtype=np.float32)

    def __call__(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            x = self.preprocess(x)
        if x.shape != self.input_shape or x.dtype != np.float32:
            raise ParcnetError(f"input is {x.dtype} {list(x.shape)}; {self.library.name} takes float32 "
                               f"{list(self.input_shape)} (NCHW): convert it, or pass an image path")
        if self.target == "arm":
            from .runtime import run_emulated

            return run_emulated(self.library, x, self.output_shape)
        from .verify import run_vm

        return run_vm(self._vm, np.ascontiguousarray(x), self._device)

    def top(self, logits: np.ndarray, k: int = 5) -> list[tuple[int, str, float]]:
        """The k largest logits of batch entry 0: (class index, class name or "", logit)."""
        row = np.asarray(logits).reshape(len(logits), -1)[0]
        names = self.class_names
        best = np.argsort(-row, kind="stable")[:k]
        return [(int(i), names[i] if i < len(names) else "", float(row[i])) for i in best]


def load(library, threads: int | None = None) -> Predictor:
    """Load a library built by compile()/tune()/scripts/build.py (its manifest beside it).
    `threads`: CPU threads for its kernels (default: every core)."""
    return Predictor(library, threads)
