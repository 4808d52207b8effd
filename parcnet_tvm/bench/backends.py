"""The backends bench compares, and the (model, batch) cases it times them on."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("pytorch-eager", "torch-compile", "onnxruntime", "openvino", "mnn", "ncnn", "tvm-untuned", "tvm-ours",
            "tvm-tuned")
TVM_BACKENDS = ("tvm-untuned", "tvm-ours", "tvm-tuned")
# Other inference engines, fp32 on the CPU: each converted model's output is checked against
# PyTorch's (max abs error <= verify.TOLERANCE) before its time counts.
PEER_BACKENDS = ("openvino", "mnn", "ncnn")
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


# What a peer needs installed: (module, what the user knows it as); MNN's converter is its
# compiled module _tools (peers.py), and ncnn's model is converted by pnnx.
_PEER_MODULES = {
    "openvino": [("openvino", "OpenVINO")],
    "mnn": [("MNN", "MNN"), ("_tools", "MNN's converter (_tools)")],
    "ncnn": [("ncnn", "ncnn"), ("pnnx", "pnnx (converts the model for ncnn)")],
}


def missing_backend(backend: str, target: str = "x86", batch: int = 1) -> str | None:
    """Why an optional backend cannot run for this target (and batch) here, or None."""
    if backend in PEER_BACKENDS:
        return _missing_peer(backend, target, batch)
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


def _missing_peer(backend: str, target: str, batch: int) -> str | None:
    import importlib.util

    if target == "arm":
        return (f"{backend} is compared on x86 only: bench reaches the board through TVM's RPC, which runs "
                f"TVM libraries (time {backend} on the board with its own benchmark tool)")
    if target != "x86":
        return f"{backend} is compared on x86 only (its CPU engine); on {target} bench times PyTorch and TVM"
    if backend == "ncnn" and batch != 1:
        return "ncnn's Mat holds one image (no batch dimension): time ncnn at --batch 1"
    for module, name in _PEER_MODULES[backend]:
        # find_spec, not import: importing MNN prints to stdout, and MNN.tools must never load
        if importlib.util.find_spec(module) is None:
            return f"{name} is not installed (pip install -e '.[bench]', which pins it)"
    return None
