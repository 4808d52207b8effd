"""The peer engines' model files (OpenVINO reads bench's ONNX file; MNN's .mnn and ncnn's
.param/.bin are converted once and kept under build/bench/, converted again when missing) and
PyTorch's output that each peer's output is checked against before its time counts."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from unittest import mock

from .. import outputs
from ..errors import ParcnetError
from . import cache
from .backends import BenchCase
from .cache import prepare_onnx

# MNN's converter is its compiled module `_tools`, called with mnnconvert's argv. Never through
# MNN.tools or the mnnconvert script: importing them pip-installs a logging package and sends
# usage data. In a child process: the converter prints hundreds of lines.
_MNN_CONVERT = "import sys, _tools; sys.exit(0 if _tools.mnnconvert(sys.argv) else 1)"


def _artifact(case: BenchCase, engine: str) -> Path:
    from ..manifest import artifact_name

    return cache.BENCH_DIR / artifact_name(case.model, engine, case.input_size, case.batch)


def model_files(case: BenchCase, backend: str, log) -> dict:
    """The worker spec's entries naming the model files `backend` loads (none for PyTorch and TVM)."""
    if backend in ("onnxruntime", "openvino"):
        return {"onnx": str(prepare_onnx(case))}
    if backend == "mnn":
        return {"mnn": str(prepare_mnn(case, log))}
    if backend == "ncnn":
        return {"ncnn": [str(path) for path in prepare_ncnn(case, log)]}
    return {}


def pytorch_reference(case: BenchCase) -> Path:
    """PyTorch's output on bench's reference input (verify.reference_input), written afresh for
    the workers of the peers: their conversions are checked against the model as it is now."""
    import numpy as np

    from ..verify import pytorch_output, reference_input
    from ..weights import prepare_model

    out = _artifact(case, "pytorch").with_suffix(".output.npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    x = reference_input((case.batch, 3, *case.input_size))
    reference = pytorch_output(prepare_model(case.model, case.input_size), x)
    with outputs.replacing(out) as (part,), open(part, "wb") as f:
        np.save(f, reference)
    return out


def prepare_mnn(case: BenchCase, log) -> Path:
    """bench's ONNX file converted to MNN's format, fp32 weights (the converter's default)."""
    out = _artifact(case, "mnn").with_suffix(".mnn")
    if out.is_file():
        return out
    onnx = prepare_onnx(case)
    log(f"[bench] converting {onnx.name} to {out.name} (MNN's converter)")
    with outputs.replacing(out) as (partial,):  # an interrupted conversion is never cached
        done = subprocess.run([sys.executable, "-c", _MNN_CONVERT, "-f", "ONNX", "--modelFile", str(onnx),
                               "--MNNModel", str(partial), "--bizCode", "parcnet-tvm"], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0 or not partial.is_file():
            tail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise ParcnetError(f"MNN's converter failed on {onnx}: {tail} (is MNN installed? pip install -e '.[bench]')")
    return out


def prepare_ncnn(case: BenchCase, log) -> tuple[Path, Path]:
    """The model traced to TorchScript and converted by pnnx to ncnn's .param and .bin, fp32."""
    from ..weights import prepare_model

    stem = _artifact(case, "ncnn")
    param, weights = stem.with_suffix(".param"), stem.with_suffix(".bin")
    if param.is_file() and weights.is_file():
        return param, weights
    log(f"[bench] converting {case.model} to {param.name} and {weights.name} (pnnx)")
    cache.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.BENCH_DIR) as work:  # pnnx writes 8 files beside its input
        work = Path(work).resolve()  # pnnx runs in it: no path relative to ours
        _trace_for_pnnx(prepare_model(case.model, case.input_size), case, work / "model.pt")
        _run_pnnx(work / "model.pt", case, work / "model.ncnn")
        with outputs.replacing(param, weights) as (param_part, weights_part):  # the two together
            os.replace(work / "model.ncnn.param", param_part)
            os.replace(work / "model.ncnn.bin", weights_part)
    return param, weights


def _trace_for_pnnx(model, case: BenchCase, out: Path) -> None:
    """The model as TorchScript, written in two ways pnnx 20261020 converts well (same function):
    - LayerNormGeneral's `clamp_min(eps)` stays an aten op ncnn cannot load; `clamp(min=eps)`
      becomes ncnn's Clip.
    - A Linear on a channels-last 4D tensor becomes Gemm between Reshapes whose shape is an
      expression, which ncnn evaluates very slowly on packed data (XT at 224, 1 thread: 940 ms
      instead of 54). Linear as a subclass pnnx does not know is traced inline, on a 2D view of
      sizes fixed at trace time: Gemm between static Reshapes."""
    import torch

    rows_linear = type("RowsLinear", (torch.nn.Linear,), {"forward": _linear_on_rows})
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = rows_linear
    with torch.no_grad(), warnings.catch_warnings(), \
            mock.patch.object(torch.Tensor, "clamp_min", lambda t, low: t.clamp(min=low)):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # int(size): fixed on purpose
        torch.jit.trace(model, torch.zeros(case.batch, 3, *case.input_size)).save(str(out))


def _linear_on_rows(self, x):
    import torch

    leading = [int(n) for n in x.shape[:-1]]
    rows = x.reshape(-1, int(x.shape[-1]))
    return torch.nn.functional.linear(rows, self.weight, self.bias).reshape(*leading, -1)


def _run_pnnx(traced: Path, case: BenchCase, out_stem: Path) -> None:
    """pnnx's converter on a TorchScript file; fp16=0: it stores fp16 weights by default."""
    import pnnx

    shape = ",".join(str(n) for n in (case.batch, 3, *case.input_size))
    done = subprocess.run([pnnx.EXEC_PATH, str(traced), f"inputshape=[{shape}]", "device=cpu", "fp16=0",
                           f"ncnnparam={out_stem}.param", f"ncnnbin={out_stem}.bin"],
                          capture_output=True, text=True, cwd=traced.parent, check=False)
    param = Path(f"{out_stem}.param")
    if done.returncode != 0 or not param.is_file():
        tail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ParcnetError(f"pnnx failed to convert {case.model}: {tail}")
    # Operators pnnx could not lower stay under their PyTorch or pnnx names, which ncnn cannot load.
    left = sorted({line.split()[0] for line in param.read_text().splitlines()[2:]
                   if line.split()[0].startswith(("aten::", "pnnx.", "F.", "torch.", "nn."))})
    if left:
        raise ParcnetError(f"pnnx left operators ncnn cannot run in {case.model}: {', '.join(left)}")

