"""Check a compiled library against the model it was built from: PyTorch, or onnxruntime on the
user's ONNX file (`--onnx`). Fixed random input, fp32, max abs error <= 1e-4."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from . import manifest as manifest_io
from .errors import ParcnetError
from .params import LibraryVM, check_files
from .params import load as load_weights
from .runtime import LIBRARIES, QEMU_CPU, run_emulated, run_runner, why_not_runnable
from .targets import get_target, use_threads
from .weights import model_from_manifest

TOLERANCE = 1e-4
INPUT_SEED = 1234  # the fixed input every verification uses


class VerificationError(ParcnetError):
    """The library's output differs from PyTorch's by more than the tolerance."""


def reference_input(shape, seed: int = INPUT_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def pytorch_output(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def reference_output(reference, x: np.ndarray) -> np.ndarray:
    """The output of the model a library was built from: a PyTorch module, or an OnnxFileModel."""
    return pytorch_output(reference, x) if isinstance(reference, torch.nn.Module) else reference(x)


def reference_name(reference) -> str:
    return "PyTorch eager fp32" if isinstance(reference, torch.nn.Module) else "onnxruntime fp32 (CPU)"


def load_vm(library, device, threads: int | None = None, weights=()) -> relax.VirtualMachine:
    """A Relax VM over a library path (its weights file beside it) or an in-memory executable
    (with `weights`), whose `main` takes the input alone; its CPU kernels (and PyTorch) on
    `threads` threads when called from this thread (default: every core)."""
    use_threads(threads)
    if isinstance(library, (str, Path)):
        check_files(library)  # a cut or swapped file: one line, not a crash in TVM's loader
        library, weights = tvm.runtime.load_module(str(library)), load_weights(library, device)
    return LibraryVM(library, device, weights)


def run_vm(vm: relax.VirtualMachine, x: np.ndarray, device) -> np.ndarray:
    out = vm["main"](tvm.runtime.tensor(x, device))
    if not hasattr(out, "numpy"):  # a tuple-returning import
        out = out[0]
    return out.numpy()


def compare(actual: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE, seed: int = INPUT_SEED,
            reference: str = "PyTorch eager fp32") -> dict:
    if actual.shape != expected.shape:
        return {"status": "failed", "reason": f"output shape {actual.shape} != reference {expected.shape}",
                "tolerance": tolerance}
    error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    return {
        "status": "passed" if error <= tolerance else "failed",
        "max_abs_error": error,
        "tolerance": tolerance,
        "reference": reference,
        "input_seed": seed,
    }


def verify_against(model, library, named_target, input_shape) -> dict:
    """Run `library` (path, or executable for targets that run natively) and compare with `model`
    (a PyTorch module, or the user's ONNX file run by onnxruntime)."""
    reason = why_not_runnable(named_target)
    if reason:
        return {"status": "skipped", "reason": reason}
    if named_target.emulated:  # ARM: the board runner under qemu, one call
        x = reference_input(input_shape)
        expected = reference_output(model, x)
        result = compare(_run(lambda: run_emulated(library, x, expected.shape), library, input_shape), expected,
                         reference=reference_name(model))
        result["ran_on"] = f"qemu-arm -cpu {QEMU_CPU} (emulated board)"
        return result
    # Natively: two calls on one VM with different inputs, so that a library that keeps
    # something of its first call (a CUDA graph that captured an input buffer, say) fails.
    device = named_target.device()
    vm = _run(lambda: load_vm(library, device), library, input_shape)
    results = []
    for seed in (INPUT_SEED, INPUT_SEED + 1):
        x = reference_input(input_shape, seed)
        results.append(compare(_run(lambda x=x: run_vm(vm, x, device), library, input_shape),
                               reference_output(model, x), seed=seed, reference=reference_name(model)))
    failed = [r for r in results if r["status"] != "passed"]
    worst = failed[0] if failed else max(results, key=lambda r: r["max_abs_error"])
    return dict(worst, calls=len(results))


class LibraryMismatchError(ParcnetError):
    """The library cannot run as its manifest describes (changed, or another manifest's)."""


def _run(call, library, input_shape):
    """A call into the library; a failure there means the library and what it was given (its
    manifest's input shape) do not fit, which is not a wrong number."""
    try:
        return call()
    except ParcnetError:
        raise
    except Exception as exc:  # TVM and the runner report these as several types
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise LibraryMismatchError(
            f"{library} cannot run on input {list(input_shape)} ({(lines[-1] if lines else type(exc).__name__)[:200]}): "
            "the library or its manifest was changed after the build; rebuild it") from None


def raise_on_failure(result: dict, library, kept_note: str = "") -> None:
    if result["status"] == "failed":
        detail = result.get("reason") or f"max abs error {result['max_abs_error']:.3g} > {result['tolerance']:g}"
        reference = result.get("reference", "PyTorch").split()[0]  # PyTorch, or onnxruntime
        raise VerificationError(f"{library} does not match {reference}: {detail}{kept_note}")


def verify_library(library) -> dict:
    """Verify an exported library from its manifest (OUT.json beside OUT.so).

    Raises ParcnetError when the library cannot run here or does not match.
    """
    library = Path(library)
    if not library.is_file():
        raise ParcnetError(f"library {library} does not exist")
    manifest = manifest_io.read(library)
    named_target = get_target(manifest["target_name"], cuda_arch=manifest["target"].get("arch"))
    reason = why_not_runnable(named_target)
    if reason:
        raise ParcnetError(f"cannot verify {library} here: {reason}")
    check_files(library)
    model = model_from_manifest(manifest)
    result = verify_against(model, library, named_target, manifest["input_shape"])
    manifest["verification"] = result
    manifest_io.write(library, manifest)
    raise_on_failure(result, library)
    return result


# ---------------------------------------------------------------- which kernel goes wrong

def trace_kernels(library, device, x: np.ndarray) -> list[dict]:
    """Run the model once and record every kernel call in order: its name and copies of all
    its arguments before and after the call (for small models: it keeps everything)."""
    vm = load_vm(library, device)
    calls: list[dict] = []

    def instrument(_func, name, before_run, _ret, *args):
        if name.startswith("vm.builtin"):
            return 0
        arrays = [a.numpy() if hasattr(a, "numpy") else None for a in args]
        if before_run:
            calls.append({"name": name, "before": arrays})
        else:
            calls[-1]["after"] = arrays
        return 0

    vm.set_instrument(instrument)
    vm["main"](tvm.runtime.tensor(x, device))
    return calls


def _max_difference(arrays_a, arrays_b) -> float:
    worst = 0.0
    for a, b in zip(arrays_a, arrays_b):
        if a is None or b is None:
            continue
        if a.shape != b.shape:
            return float("inf")
        if not a.size:
            continue
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                return float("inf")
            continue
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if (nan_a != nan_b).any():  # a NaN on one side only
            return float("inf")
        worst = max(worst, float(np.abs(np.where(nan_a, 0, a).astype(np.float64) - np.where(nan_b, 0, b)).max()))
    return worst


def first_divergence(trace: list[dict], reference: list[dict], tolerance: float = 1e-3) -> dict | None:
    """The first kernel call of `trace` that differs from the same call in `reference` (two
    builds of one model run on one input), or None when every call agrees.

    "kernel": its inputs agreed and its outputs did not, so the kernel itself is wrong;
    "inputs": its inputs already differed though every earlier call agreed, so something
    between the calls (memory planning, an alias, a missing sync) changed a live buffer.
    """
    # Compared call by call, in order: builds of one graph for two targets call the same
    # kernels, though the names may differ (a CUDA build fuses twice: fused_fused_gelu).
    if len(trace) != len(reference):
        return {"index": None, "name": None, "cause": "different kernels",
                "detail": f"the builds make {len(trace)} and {len(reference)} kernel calls: build both "
                          "from the same graph"}
    for index, (call, ref) in enumerate(zip(trace, reference)):
        # Arguments the reference call left unchanged are its inputs; the others are outputs,
        # whose contents before the call are whatever the memory held.
        inputs = [b is not None and a is not None and np.array_equal(b, a, equal_nan=True)
                  for b, a in zip(ref["before"], ref["after"])]
        before = _max_difference(*([v for v, is_input in zip(args, inputs) if is_input]
                                   for args in (call["before"], ref["before"])))
        after = _max_difference(call["after"], ref["after"])
        if before > tolerance or after > tolerance:
            cause = "inputs" if before > tolerance else "kernel"
            return {"index": index, "name": call["name"], "cause": cause,
                    "input_difference": before, "output_difference": after,
                    "detail": f"call {index} ({call['name']}): " + (
                        f"its arguments differed by {before:.3g} before it ran, though every earlier call "
                        "agreed: a live buffer was overwritten between calls" if cause == "inputs" else
                        f"same inputs, outputs differ by {after:.3g}: the kernel is wrong")}
    return None


# ---------------------------------------------------------------- the ARM bundle

def parse_top(stdout: str) -> list[int]:
    """Class indices from the runner's top-k listing."""
    return [int(line.split()[0]) for line in stdout.splitlines() if re.match(r"^\s+\d+\s+-?[\d.]", line)]


def check_bundle_top5(bundle) -> str:
    """Run the bundle's own runner under qemu on the fixed verification input; its top-5 must
    equal PyTorch's. Returns a short report; raises ParcnetError on a mismatch."""
    bundle = Path(bundle)
    library = next(p for p in bundle.glob("*.so") if p.name not in LIBRARIES)
    info = manifest_io.read(library)
    x = reference_input(info["input_shape"])
    expected = reference_output(model_from_manifest(info), x)[0]
    torch_top5 = [int(i) for i in torch.topk(torch.from_numpy(expected), 5).indices]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "input.raw"
        x.tofile(raw)
        done = run_runner(library, ["--input", str(raw)], runtime=bundle)
    if done.returncode != 0:
        raise ParcnetError(f"the bundle's runner failed under qemu: {done.stderr.strip()}")
    runner_top5 = parse_top(done.stdout)
    report = f"runner under qemu: top-5 {runner_top5}; PyTorch: top-5 {torch_top5}"
    if runner_top5 != torch_top5:
        raise ParcnetError("top-5 differs from PyTorch: " + report)
    return report + " (equal)"
