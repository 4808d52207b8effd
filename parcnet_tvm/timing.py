"""Latency measurement shared by build, tune and bench: warm-up, then median and p90."""

from __future__ import annotations

import time

import numpy as np


def measure_ms(run, repeat: int = 10, warmup: int = 2, sync=None, number: int = 1, first_samples=()) -> dict:
    """Call `run()` `warmup` times, then take `repeat` samples of `number` calls each (the
    mean per call); `sync()` ends each sample (GPU calls return before the work is done).
    `first_samples` (ms) are samples the caller already took the same way."""
    for _ in range(warmup):
        run()
    if sync:
        sync()
    samples = list(first_samples)
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3 / number)
    return summarize_ms(samples)


def summarize_ms(samples) -> dict:
    return {
        "median_ms": float(np.median(samples)),
        "p90_ms": float(np.percentile(samples, 90)),
        "repeat": len(samples),
        "samples_ms": [round(float(s), 4) for s in samples],
    }


def compare_with_pytorch(library, manifest: dict, repeat: int = 10, baselines=()) -> list[dict]:
    """Time an exported library, any `baselines` (other libraries built for the same model,
    input and target) and PyTorch eager side by side: one process, same input and threads."""
    import torch
    import tvm

    from . import manifest as manifest_io
    from .build import model_from_manifest
    from .errors import ParcnetError
    from .targets import get_target, host_cores
    from .verify import load_vm, reference_input

    named_target = get_target(manifest["target_name"], cuda_arch=manifest["target"].get("arch"))
    reason = named_target.why_not_runnable_here()
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
    torch.set_num_threads(host_cores())
    x = reference_input(manifest["input_shape"])
    model = model_from_manifest(manifest)
    device = named_target.device()
    x_torch = torch.from_numpy(x)
    with torch.no_grad():
        rows = [dict(backend="pytorch-eager", library=None, **measure_ms(lambda: model(x_torch), repeat=repeat))]
    x_tvm = tvm.runtime.tensor(x, device)
    for path, info in libraries:
        main = load_vm(path, device)["main"]
        timing = measure_ms(lambda: main(x_tvm), repeat=repeat, sync=device.sync)
        rows.append(dict(backend=library_label(info), library=str(path), **timing))
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
    from .targets import cpu_model_name, host_cores

    lines = [
        f"{manifest['model']} {manifest['input_shape']} on {cpu_model_name()}, {host_cores()} threads"
        f" ({manifest['target_description']})",
        "| backend | median ms | p90 ms | speedup vs PyTorch |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
                     f"{row['speedup_vs_pytorch']:.2f}x |")
    return "\n".join(lines)
