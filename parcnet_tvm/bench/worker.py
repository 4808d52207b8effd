"""One backend timed in a fresh process (`python -m parcnet_tvm.bench --worker SPEC`): the
same warm-up, repeats and memory accounting for every backend, on x86 and CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..errors import ParcnetError


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _thread_cpu_ns() -> dict[str, int]:
    """CPU time each thread of this process has run so far, ns (schedstat; else stat's ticks)."""
    times = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                times[tid] = int(stat.read().split()[0])
        except FileNotFoundError:  # a kernel without schedstat, or a thread that has ended
            try:
                with open(f"/proc/self/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # utime, stime: fields 14, 15
                times[tid] = (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")
            except FileNotFoundError:
                pass
    return times


def busy_threads(before: dict[str, int], after: dict[str, int]) -> int:
    """Threads that ran at least a quarter as long as the busiest one between two
    _thread_cpu_ns() readings: the threads a backend really used, however loaded the machine."""
    ran = [ns - before.get(tid, 0) for tid, ns in after.items()]
    busiest = max(ran, default=0)
    return sum(ns >= busiest / 4 for ns in ran) if busiest > 0 else 0


def _gpu_used_mb() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def worker(spec: dict) -> dict:
    """Time one backend in this (fresh) process; returns the timing and memory figures."""
    import torch

    from ..targets import use_threads
    from ..timing import measure_ms
    from ..verify import reference_input
    from ..weights import prepare_model

    use_threads(spec["threads"])  # PyTorch (torch.compile's kernels too) and TVM; ONNX Runtime below
    shape = (spec["batch"], 3, *spec["input_size"])
    x = reference_input(shape)
    backend = spec["backend"]
    cuda = spec["target"] == "cuda"
    try:
        import onnxruntime
    except ImportError:
        pass
    import tvm

    if cuda:  # both frameworks share the primary CUDA context: create it before the baseline
        torch.zeros(1, device="cuda")
        tvm.cuda(0).sync()
    # VmHWM, not getrusage's ru_maxrss: a child inherits its parent's ru_maxrss at fork.
    memory_now = _gpu_used_mb if cuda else (lambda: _status_mb("VmRSS"))
    baseline = memory_now()
    sync = None
    if backend in ("pytorch-eager", "torch-compile"):
        model = prepare_model(spec["model"], spec["input_size"], spec.get("checkpoint"),
                              spec.get("resize_kernels", False))
        x_torch = torch.from_numpy(x)
        if cuda:
            model, x_torch, sync = model.cuda(), x_torch.cuda(), torch.cuda.synchronize
        if backend == "torch-compile":
            model = torch.compile(model)

        def run():
            with torch.no_grad():
                return model(x_torch)
    elif backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run():
            return session.run(None, {name: x})
    else:
        from ..verify import load_vm

        device = tvm.cuda(0) if cuda else tvm.cpu(0)
        main = load_vm(spec["library"], device, spec["threads"])["main"]
        x_tvm = tvm.runtime.tensor(x, device)
        sync = device.sync if cuda else None

        def run():
            return main(x_tvm)
    run()  # first call (compiles for torch.compile, allocates pools) is not timed
    if sync:
        sync()
    # The second call is timed on its own to size the repeats; for slow backends it is one of them.
    one = measure_ms(run, repeat=1, warmup=0, sync=sync)["samples_ms"]
    repeat = max(2, min(spec["repeat"], int(spec["max_seconds"] * 1e3 / max(one[0], 1e-3))))
    capped = repeat < spec["repeat"]
    threads_before = _thread_cpu_ns()
    timing = measure_ms(run, repeat=repeat - 1 if capped else repeat, warmup=0 if capped else 1, sync=sync,
                        first_samples=one if capped else ())
    busy = busy_threads(threads_before, _thread_cpu_ns())
    peak = (memory_now() if cuda else _status_mb("VmHWM")) - baseline
    return {**timing, "peak_mem_mb": round(peak, 1), "before_mb": round(baseline, 1),
            "busy_threads": busy}


def _run_worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "parcnet_tvm.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParcnetError(f"{spec['backend']} failed: {tail}")
    return json.loads(lines[-1])
