"""What a bench run reports: the machine header, the table, JSON rows and the plot."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from .. import outputs
from ..tables import markdown_table
from .backends import BACKENDS
from .on_board import Board


@functools.lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """The GPU's name and driver, e.g. 'NVIDIA H100 80GB HBM3, driver 580.159.04' (None without one)."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return name
    return f"{name}, driver {driver}"




def torch_gpu_precision() -> str:
    """PyTorch's GPU math as run here (its defaults unless the user changed them): TF32 tensor
    cores in cuDNN convolutions, none in matmuls. TVM's libraries compute in plain fp32."""
    import torch

    def state(flag: bool) -> str:
        return "TF32" if flag else "fp32"

    return (f"PyTorch convolutions {state(torch.backends.cudnn.allow_tf32)}, matmuls "
            f"{state(torch.backends.cuda.matmul.allow_tf32)}; TVM fp32")


def machine_header(threads: int, target: str = "x86", board: Board | None = None) -> str:
    """Where the numbers were measured, and with which versions."""
    import torch
    import tvm

    from ..targets import cpu_model_name, get_target, host_cores, host_cpu

    versions = f"torch {torch.__version__}, TVM {tvm.__version__}"
    if target == "arm":
        how = "emulated board (qemu-arm): correctness only, no latency" if board.emulated else \
            "board reached through RPC, TVM runtime threads: the board's default"
        return f"{get_target('arm').description}; {how} ({board.where}); host {cpu_model_name()}; {versions}"
    if target == "cuda":
        name = torch.cuda.get_device_name(0)
        return (f"{name} ({get_target('cuda').as_dict()['arch']}), CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}; {torch_gpu_precision()}; host {cpu_model_name()}, "
                f"{threads} threads; {versions}")
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    cpu = host_cpu()  # rankings change between CPUs of one class: name it by cpuid, not by brand
    return (f"{cpu.model_name} (family {cpu.family} model {cpu.model}, {cpu.mcpu}), {host_cores()} cores, "
            f"{threads} threads; {platform.system()} {platform.machine()}; "
            f"{versions}, onnxruntime {ort}{_peer_versions()}")


def _peer_versions() -> str:
    """', openvino 2026.4.1, ...' for the peer engines installed (from their metadata: importing
    MNN prints to stdout)."""
    from importlib import metadata

    found = []
    for name in ("openvino", "MNN", "ncnn", "pnnx"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return "".join(f", {text}" for text in found)


def _estimate_cell(row: dict) -> str:
    if row.get("rk3288_estimate_ms") is None:
        return ""
    return f"{row['rk3288_estimate_ms']:.0f} / {row['rk3288_estimate_ms_1t']:.0f} ms (estimate)" + \
        (f", needs {row['rk3288_footprint_mib']:.0f} MiB" if row.get("rk3288_footprint_mib") else "")


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(rows: list[dict], header: str) -> str:
    if rows and all(r["median_ms"] is None for r in rows if not r.get("skipped")) and \
            any("max_abs_error" in r for r in rows):  # the emulated board: correctness only
        cells = [[r["model"], r["batch"], r["backend"],
                  f"skipped: {r['skipped']}" if r.get("skipped") else f"matches ({r['max_abs_error']:.1e})",
                  _estimate_cell(r)] for r in rows]
        return "\n".join([f"Machine: {header}", "", *markdown_table(
            ["model", "batch", "backend", "output vs PyTorch (max abs error)",
             "RK3288 estimate, 4 / 1 threads (not a measurement)"], cells)])
    cells = []
    for r in rows:
        if r.get("skipped"):
            cells.append([r["model"], r["batch"], r["backend"], f"skipped: {r['skipped']}", "", "", ""])
            continue
        speed = f"{r['speedup_vs_pytorch']:.2f}x" if r["speedup_vs_pytorch"] else ""
        median = f"{r['median_ms']:.2f}" + (f" ({r['source']})" if r.get("source") else "")
        cells.append([r["model"], r["batch"], r["backend"], median, _cell(r["p90_ms"], ".2f"),
                      _cell(r["peak_mem_mb"], ".0f"), speed])
    return "\n".join([f"Machine: {header}", "", *markdown_table(
        ["model", "batch", "backend", "median ms", "p90 ms", "peak mem MB", "speedup vs pytorch-eager"], cells)])


def json_rows(rows: list[dict]) -> list[dict]:
    keys = ("model", "target", "batch", "input_size", "backend", "median_ms", "p90_ms", "peak_mem_mb",
            "speedup_vs_pytorch")
    extra = ("skipped", "max_abs_error", "source", "gpu", "rk3288_estimate_ms", "rk3288_estimate_ms_1t",
             "rk3288_footprint_mib", "busy_threads", "round_medians_ms")
    return [{k: r[k] for k in keys} | {k: r[k] for k in extra if r.get(k) is not None} for r in rows]


def plot(rows: list[dict], header: str, path) -> str | None:
    """Bar chart of median latency per backend per (model, batch), log scale. Returns None,
    or why no plot was made (matplotlib missing, nothing timed)."""
    if not any(r["median_ms"] for r in rows):
        return "no latency to plot (nothing was timed)"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    groups = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda g: (g[1], g[0]))
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)), 4.5))
    width = 0.8 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        values = []
        for group in groups:
            row = next((r for r in rows if (r["model"], r["batch"]) == group and r["backend"] == backend), None)
            values.append(row["median_ms"] if row and row["median_ms"] else 0)
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=backend)
    ax.set_xticks([g + width * (len(backends) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{m.replace('parcnetv2_', '').upper()} bs{b}" for m, b in groups])
    ax.set_yscale("log")
    ax.set_ylabel("median latency, ms (log scale)")
    ax.set_title(header, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with outputs.replacing(path) as (part,):
        fig.savefig(part, dpi=120)
    plt.close(fig)
    return None


def _describe(row: dict) -> str:
    if row["median_ms"] is None:
        return f"output matches PyTorch (max abs error {row['max_abs_error']:.1e}); emulated, not timed"
    text = f"{row['median_ms']:.2f} ms"
    if row.get("repeat"):
        text += f" (p90 {row['p90_ms']:.2f}, {row['repeat']} runs)"
    if row.get("peak_mem_mb") is not None:
        text += f", peak +{row['peak_mem_mb']:.0f} MB"
    return text + (f" [{row['source']}]" if row.get("source") else "")
