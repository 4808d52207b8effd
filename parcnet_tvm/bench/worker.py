"""One backend timed in a fresh process (`python -m parcnet_tvm.bench --worker SPEC`): the
same warm-up, repeats and memory accounting for every backend, on x86 and CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

from ..errors import ParcnetError


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _gpu_used_mb() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def worker(spec: dict) -> dict:
    """Time one backend in this (fresh) process; returns the timing and memory figures."""
    import torch

    from ..timing import measure_ms
    from ..verify import reference_input
    from ..weights import prepare_model

    torch.set_num_threads(spec["threads"])
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
        main = load_vm(spec["library"], device)["main"]
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
    timing = measure_ms(run, repeat=repeat - 1 if capped else repeat, warmup=0 if capped else 1, sync=sync,
                        first_samples=one if capped else ())
    peak = (memory_now() if cuda else _status_mb("VmHWM")) - baseline
    return {**timing, "peak_mem_mb": round(peak, 1), "before_mb": round(baseline, 1)}


def _run_worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "parcnet_tvm.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParcnetError(f"{spec['backend']} failed: {tail}")
    return json.loads(lines[-1])
