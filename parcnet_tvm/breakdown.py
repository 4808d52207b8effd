"""Where a library's time goes: per-kernel times of a TVM library next to PyTorch's profiler.

TVM 0.27's Relax VM has no profiler, so `profile_library` runs the model once with a VM
instrument: before each kernel call it times that kernel alone on the call's own arguments
(warm-up, then the median of `repeat` calls; kernels write only their output arguments, so
calling one again is harmless), then lets the VM go on. Kernel names lose their numeric
suffixes so the same op in every block adds up (`fused_matmul4_add` x12 ...).
"""

from __future__ import annotations

import re
import time

import numpy as np

from .timing import measure_ms

_SUFFIX = re.compile(r"\d+(?=(_|$))")


def kernel_group(name: str) -> str:
    """`fused_conv2d9_add12_multiply` -> `fused_conv2d_add_multiply`: one row per kind of kernel.
    Our hand-written kernels (`parcnet_sgemm_6x8_packed`) keep their names."""
    return name if name.startswith("parcnet_") else _SUFFIX.sub("", name)


def _rows(times: dict, total_ms: float | None = None) -> list[dict]:
    total = total_ms if total_ms else sum(t for t, _ in times.values())
    rows = [{"name": name, "ms": t, "calls": n, "share": t / total if total else 0.0}
            for name, (t, n) in times.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def profile_library(library, device=None, repeat: int = 5) -> dict:
    """{"end_to_end_ms": median of plain runs, "kernels": rows of kernel groups}."""
    import tvm

    from . import manifest as manifest_io
    from .verify import load_vm, reference_input

    device = device or tvm.cpu(0)
    manifest = manifest_io.read(library)
    vm = load_vm(library, device)
    x = tvm.runtime.tensor(reference_input(manifest["input_shape"]), device)
    end_to_end = measure_ms(lambda: vm["main"](x), repeat=repeat, warmup=1, sync=device.sync)["median_ms"]
    times: dict = {}

    def instrument(func, name, before_run, _ret, *args):
        if before_run and not name.startswith("vm.builtin"):
            func(*args)  # warm-up
            device.sync()
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                func(*args)
                device.sync()
                samples.append((time.perf_counter() - started) * 1e3)
            total, calls = times.get(kernel_group(name), (0.0, 0))
            times[kernel_group(name)] = (total + float(np.median(samples)), calls + 1)
        return 0  # let the VM run the call as usual

    vm.set_instrument(instrument)
    vm["main"](x)
    return {"end_to_end_ms": end_to_end, "kernels": _rows(times)}


def estimate_kernels(library) -> dict:
    """{"end_to_end_ms": the 1-thread estimate, "end_to_end_ms_4t", "kernels": rows}: the RK3288
    estimate of each kernel group at 1 thread; what runs outside the library (the VM, libc) is
    one row of its own."""
    from . import manifest as manifest_io
    from .counting import count_library
    from .estimate import Calibrated

    calibrated = Calibrated.load()
    shape = manifest_io.read(library)["input_shape"]
    counts = count_library(library, shape, 1, blocks=True)
    ms: dict = {}
    kernels: dict = {}
    for symbol, c in counts.per_symbol(library).items():
        kernel = symbol.removeprefix("__tvm_ffi_").removesuffix("_compute_")  # wrapper, body, parallel body
        group = kernel_group(kernel)
        ms[group] = ms.get(group, 0.0) + calibrated.model.thread_ms(c)
        kernels.setdefault(group, set()).add(kernel)
    times = {group: (t, len(kernels[group])) for group, t in ms.items()}  # "calls": distinct kernels
    whole = calibrated.model.estimate_ms(counts.threads, 1)
    times["(outside the library: VM, runtime, libc)"] = (max(whole - sum(t for t, _ in times.values()), 0.0), 0)
    four = calibrated.model.estimate_ms(count_library(library, shape, 4).threads, 4)
    return {"end_to_end_ms": whole, "end_to_end_ms_4t": four, "kernels": _rows(times, whole),
            "line": calibrated.line(four, whole)}


def profile_pytorch(model, input_shape, threads: int) -> dict:
    """PyTorch's own profiler: self CPU time per aten op, one profiled run after warm-up."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .verify import reference_input

    torch.set_num_threads(threads)
    x = torch.from_numpy(reference_input(input_shape))
    with torch.no_grad():
        end_to_end = measure_ms(lambda: model(x), repeat=5, warmup=1)["median_ms"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    times = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()
             if e.self_cpu_time_total > 0}
    return {"end_to_end_ms": end_to_end, "kernels": _rows(times)}


def format_breakdown(title: str, result: dict, top: int) -> str:
    rows = result["kernels"]
    summed = sum(r["ms"] for r in rows)
    lines = [f"{title}: {result['end_to_end_ms']:.2f} ms end to end, {summed:.2f} ms summed over ops",
             "| op | calls | ms | share |", "|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| {r['name']} | {r['calls']} | {r['ms']:.3f} | {100 * r['share']:.1f}% |")
    if len(rows) > top:
        rest = rows[top:]
        lines.append(f"| ({len(rest)} more) | {sum(r['calls'] for r in rest)} | {sum(r['ms'] for r in rest):.3f} | "
                     f"{100 * sum(r['share'] for r in rest):.1f}% |")
    return "\n".join(lines)
