"""Compare one library with its baselines and PyTorch eager (build.py --time, tune.py's table):
the same worker as bench, one fresh process per backend, same input and threads."""

from __future__ import annotations

from .. import manifest as manifest_io
from ..errors import ParcnetError
from ..runtime import why_not_runnable
from ..tables import markdown_table
from ..targets import cpu_model_name, get_target, host_cores
from .worker import _run_worker


def compare_with_pytorch(library, manifest: dict, repeat: int = 10, baselines=()) -> list[dict]:
    """Time an exported library, any `baselines` (other libraries built for the same model,
    input and target) and PyTorch eager side by side."""
    named_target = get_target(manifest["target_name"], cuda_arch=manifest["target"].get("arch"))
    reason = why_not_runnable(named_target)
    if reason:
        raise ParcnetError(f"cannot time {library} here: {reason}")
    if named_target.emulated:
        raise ParcnetError(f"{library} would run under qemu here, and emulated time is not latency: "
                           "time it on the board (parcnet_runner --repeat N) or through RPC")
    libraries = [(library, manifest)]
    for baseline in baselines:
        other = manifest_io.read(baseline)
        if (other["input_shape"], other["model"], other["target"]) != \
                (manifest["input_shape"], manifest["model"], manifest["target"]):
            raise ParcnetError(f"{baseline} was built for another model, input or target than {library}")
        libraries.append((baseline, other))
    common = {"model": manifest["model"], "checkpoint": manifest["weights"].get("checkpoint"),
              "resize_kernels": manifest.get("resize_kernels", False),
              "batch": manifest["input_shape"][0], "input_size": manifest["input_size"],
              "target": named_target.name, "threads": host_cores(), "repeat": repeat, "max_seconds": 60}
    rows = [dict(backend="pytorch-eager", library=None, **_run_worker({**common, "backend": "pytorch-eager"}))]
    for path, info in libraries:
        label = library_label(info)
        rows.append(dict(backend=label, library=str(path),
                         **_run_worker({**common, "backend": label, "library": str(path)})))
    for row in rows:
        row["speedup_vs_pytorch"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def library_label(manifest: dict) -> str:
    """tvm-tuned (a tuning database applied), tvm-ours (our pipeline, no tuning), tvm-ours-generic-conv
    (our pipeline with TVM's conv2d for the oversized convs) or tvm-untuned (TVM's default build)."""
    if manifest.get("tuning_database"):
        return "tvm-tuned"
    if manifest.get("schedules", "tvm-default") == "tvm-default":
        return "tvm-untuned"
    return "tvm-ours" if manifest["oversized_op"]["custom_op"] else "tvm-ours-generic-conv"


def format_latency_table(rows: list[dict], manifest: dict) -> str:
    title = (f"{manifest['model']} {manifest['input_shape']} on {cpu_model_name()}, {host_cores()} threads"
             f" ({manifest['target_description']})")
    cells = [[row["backend"], f"{row['median_ms']:.2f}", f"{row['p90_ms']:.2f}", f"{row['speedup_vs_pytorch']:.2f}x"]
             for row in rows]
    return "\n".join([title, *markdown_table(["backend", "median ms", "p90 ms", "speedup vs PyTorch"], cells)])
