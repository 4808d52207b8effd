"""The backends bench compares, and the (model, batch) cases it times them on."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("pytorch-eager", "torch-compile", "onnxruntime", "tvm-untuned", "tvm-ours", "tvm-tuned")
TVM_BACKENDS = ("tvm-untuned", "tvm-ours", "tvm-tuned")
DEFAULT_BACKENDS = {
    "x86": BACKENDS,
    "cuda": ("pytorch-eager", "torch-compile", "tvm-untuned", "tvm-ours", "tvm-tuned"),
    "arm": ("pytorch-eager", "tvm-untuned", "tvm-ours", "tvm-tuned"),
}


@dataclass
class BenchCase:
    model: str
    batch: int
    input_size: tuple[int, int]
    target: str = "x86"


def missing_backend(backend: str, target: str = "x86") -> str | None:
    """Why an optional backend cannot run for this target here, or None."""
    if backend == "onnxruntime":
        if target != "x86":
            return "ONNX Runtime is compared on x86 (its CPU provider) only"
        try:
            import onnxruntime
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
    if backend == "torch-compile":
        import shutil

        if target == "arm":
            return "torch.compile does not run through RPC; time it on the board yourself"
        if target == "cuda":
            try:
                import triton
            except ImportError:
                return "torch.compile on CUDA needs triton (pip install triton)"
        elif shutil.which("g++") is None and shutil.which("gcc") is None:
            return "torch.compile needs a C++ compiler (apt-get install g++)"
    return None
