"""One backend timed in a fresh process (`python -m parcnet_tvm.bench --worker SPEC`): the
same warm-up, repeats and memory accounting for every backend, on x86 and CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..errors import ParcnetError
from .backends import TVM_BACKENDS


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


# The module each peer engine loads, imported before the memory baseline like torch, TVM and
# ONNX Runtime: what a backend adds is its model, not its libraries.
_ENGINE_MODULES = {"openvino": "openvino", "mnn": "MNN.nn", "ncnn": "ncnn"}


def worker(spec: dict) -> dict:
    """Time one backend in this (fresh) process; returns the timing and memory figures (and the
    output's max abs error when the spec names PyTorch's output to check against: a peer whose
    error is over the tolerance returns only {"mismatch": why}, and is not timed)."""
    import torch

    from ..targets import use_threads
    from ..timing import measure_ms
    from ..verify import reference_input

    use_threads(spec["threads"])  # PyTorch (torch.compile's kernels too) and TVM; the others in their setup
    x = reference_input((spec["batch"], 3, *spec["input_size"]))
    backend = spec["backend"]
    cuda = spec["target"] == "cuda"
    try:
        import onnxruntime
    except ImportError:
        pass
    if backend in _ENGINE_MODULES:
        _import_engine(backend)
    import tvm

    if cuda:  # both frameworks share the primary CUDA context: create it before the baseline
        torch.zeros(1, device="cuda")
        tvm.cuda(0).sync()
    # VmHWM, not getrusage's ru_maxrss: a child inherits its parent's ru_maxrss at fork.
    memory_now = _gpu_used_mb if cuda else (lambda: _status_mb("VmRSS"))
    baseline = memory_now()
    run, sync = _session(spec, x, cuda)
    output = run()  # first call (compiles for torch.compile, allocates pools) is not timed
    if sync:
        sync()
    checked = _check(output, spec["reference"]) if spec.get("reference") else {}
    if "mismatch" in checked:
        return checked
    # The second call is timed on its own to size the repeats; for slow backends it is one of them.
    one = measure_ms(run, repeat=1, warmup=0, sync=sync)["samples_ms"]
    repeat = max(2, min(spec["repeat"], int(spec["max_seconds"] * 1e3 / max(one[0], 1e-3))))
    capped = repeat < spec["repeat"]
    threads_before = _thread_cpu_ns()
    timing = measure_ms(run, repeat=repeat - 1 if capped else repeat, warmup=0 if capped else 1, sync=sync,
                        first_samples=one if capped else ())
    busy = busy_threads(threads_before, _thread_cpu_ns())
    peak = (memory_now() if cuda else _status_mb("VmHWM")) - baseline
    return {**timing, **checked, "peak_mem_mb": round(peak, 1), "before_mb": round(baseline, 1),
            "busy_threads": busy}


def _import_engine(backend: str) -> None:
    import importlib

    if backend == "openvino":
        # `import openvino` imports its model converter (ovc), whose import sends a usage event to
        # Google Analytics. Bench reads ONNX with the runtime alone: keep the converter out
        # (openvino's __init__ skips it on ImportError).
        sys.modules.setdefault("openvino.tools.ovc", None)
    importlib.import_module(_ENGINE_MODULES[backend])


def _check(output, reference_path: str) -> dict:
    """{"max_abs_error": e} if the output matches PyTorch's within verify's tolerance, else {"mismatch": why}."""
    import numpy as np

    from ..verify import TOLERANCE, compare

    expected = np.load(reference_path)
    actual = np.asarray(output, dtype=np.float32)
    if actual.size == expected.size:
        actual = actual.reshape(expected.shape)  # ncnn drops the batch dimension
    result = compare(actual, expected)
    if result["status"] == "passed":
        return {"max_abs_error": result["max_abs_error"]}
    why = result.get("reason") or f"max abs error {result['max_abs_error']:.1e} > {TOLERANCE:g}"
    return {"mismatch": f"output differs from PyTorch's: {why} (a stale conversion? delete it from build/bench/)"}


def _session(spec: dict, x, cuda: bool):
    """(run, sync) for the spec's backend: run() makes one inference and returns its output;
    sync (or None) waits for the GPU."""
    backend = spec["backend"]
    if backend in ("pytorch-eager", "torch-compile"):
        return _pytorch_session(spec, x, cuda)
    if backend in TVM_BACKENDS:
        return _tvm_session(spec, x, cuda)
    peers = {"onnxruntime": _onnxruntime_session, "openvino": _openvino_session, "mnn": _mnn_session,
             "ncnn": _ncnn_session}
    return peers[backend](spec, x), None


def _pytorch_session(spec: dict, x, cuda: bool):
    import torch

    from ..weights import prepare_model

    model = prepare_model(spec["model"], spec["input_size"], spec.get("checkpoint"), spec.get("resize_kernels", False))
    x_torch = torch.from_numpy(x)
    sync = None
    if cuda:
        model, x_torch, sync = model.cuda(), x_torch.cuda(), torch.cuda.synchronize
    if spec["backend"] == "torch-compile":
        model = torch.compile(model)

    def run():
        with torch.no_grad():
            return model(x_torch)
    return run, sync


def _tvm_session(spec: dict, x, cuda: bool):
    import tvm

    from ..verify import load_vm

    device = tvm.cuda(0) if cuda else tvm.cpu(0)
    main = load_vm(spec["library"], device, spec["threads"])["main"]
    x_tvm = tvm.runtime.tensor(x, device)
    return (lambda: main(x_tvm)), (device.sync if cuda else None)


def _onnxruntime_session(spec: dict, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def _openvino_session(spec: dict, x):
    """OpenVINO's CPU plugin on bench's ONNX file, fp32 (on CPUs with AVX512_BF16 it computes in
    bf16 unless told otherwise), one stream of `threads` threads."""
    _import_engine("openvino")  # without its converter, which sends usage data
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": spec["threads"], "NUM_STREAMS": 1}
    compiled = core.compile_model(core.read_model(spec["onnx"]), "CPU", config)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        raise RuntimeError(f"OpenVINO compiled the model for {precision}, not f32")
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})[0]


def _mnn_session(spec: dict, x):
    """MNN's module API on the converted .mnn file: CPU, precision normal (fp32), `threads` threads."""
    from MNN import expr, nn

    config = {"backend": "CPU", "precision": "normal", "numThread": spec["threads"]}
    runtime = nn.create_runtime_manager((config,))
    module = nn.load_module_from_file(spec["mnn"], ["input"], ["logits"], runtime_manager=runtime)
    x_mnn = expr.const(x, list(x.shape), expr.NCHW)
    return lambda: module.forward(x_mnn).read()


def _ncnn_session(spec: dict, x):
    """ncnn on pnnx's .param/.bin: fp32 storage and arithmetic throughout (its defaults store fp16
    where the CPU has it), packing layout as by default, `threads` threads."""
    import ncnn
    import numpy as np

    net = ncnn.Net()
    net.opt.num_threads = spec["threads"]
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_packed = net.opt.use_bf16_storage = False
    param, weights = spec["ncnn"]
    if net.load_param(param) != 0 or net.load_model(weights) != 0:
        raise RuntimeError(f"ncnn cannot load {param} and {weights}")
    image = ncnn.Mat(x[0])  # one image: bench asks ncnn for batch 1 only
    source, result = net.input_names()[0], net.output_names()[0]

    def run():
        extractor = net.create_extractor()  # one per inference, as ncnn's examples do
        extractor.input(source, image)
        status, out = extractor.extract(result)
        if status != 0:
            raise RuntimeError(f"ncnn's extractor failed ({status})")
        return np.array(out)
    return run


def _run_worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "parcnet_tvm.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParcnetError(f"{spec['backend']} failed: {tail}")
    result = json.loads(lines[-1])
    if "mismatch" in result:
        raise ParcnetError(result["mismatch"])
    return result
