"""Benchmark stage: our libraries against PyTorch and the peers a user would pick, side by side.

x86 and CUDA: each (model, batch, backend) is timed in a fresh worker process (`python -m
parcnet_tvm.bench --worker ...`), one after the other, at the same thread count: warm-up, then
the median and p90 of the repeats (CUDA: each run ends with a device synchronisation). A fresh
process per backend is what makes the memory column honest. `peak_mem_mb` on x86 is the peak
resident memory (VmHWM in /proc/self/status) minus the resident memory the worker had after
importing torch, TVM and ONNX Runtime and before creating the backend, i.e. what the backend
itself added at its peak: weights, activations, workspaces, compiled code. On CUDA it is the
GPU memory in use after the runs (cudaMemGetInfo) minus the same before the backend was made:
PyTorch's caching allocator and TVM's pooled allocator both keep their peak allocations.

ARM: the TVM libraries are uploaded to the board through RPC, their output is checked against
PyTorch's (computed here), then they are timed there (`time_evaluator`, one call per sample).
PyTorch does not run through RPC: `--pytorch-ms` adds a time the user measured on the board.
The emulated board (qemu) checks correctness only; its times are never shown.

TVM libraries are built (and verified against PyTorch, like every library of the pipeline)
by the parent and cached under build/bench/; ONNX files likewise.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ParcnetError

BACKENDS = ("pytorch-eager", "torch-compile", "onnxruntime", "tvm-untuned", "tvm-ours", "tvm-tuned")
TVM_BACKENDS = ("tvm-untuned", "tvm-ours", "tvm-tuned")
DEFAULT_BACKENDS = {
    "x86": BACKENDS,
    "cuda": ("pytorch-eager", "torch-compile", "tvm-untuned", "tvm-ours", "tvm-tuned"),
    "arm": ("pytorch-eager", "tvm-untuned", "tvm-ours", "tvm-tuned"),
}
BENCH_DIR = Path("build") / "bench"


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
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install -e '.[bench]')"
    if backend == "torch-compile":
        import shutil

        if target == "arm":
            return "torch.compile does not run through RPC; time it on the board yourself"
        if target == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                return "torch.compile on CUDA needs triton (pip install triton)"
        elif shutil.which("g++") is None and shutil.which("gcc") is None:
            return "torch.compile needs a C++ compiler (apt-get install g++)"
    return None


# ---------------------------------------------------------------- the worker (one backend)

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

    from .build import prepare_model
    from .timing import measure_ms
    from .verify import reference_input

    torch.set_num_threads(spec["threads"])
    shape = (spec["batch"], 3, *spec["input_size"])
    x = reference_input(shape)
    backend = spec["backend"]
    cuda = spec["target"] == "cuda"
    try:
        import onnxruntime  # noqa: F401  (imported before the baseline, like torch and TVM)
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
        model = prepare_model(spec["model"], spec["input_size"])
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
        from .verify import load_vm

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


# ---------------------------------------------------------------- the parent

def _run_worker(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "parcnet_tvm.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParcnetError(f"{spec['backend']} failed: {tail}")
    return json.loads(lines[-1])


def prepare_library(case: BenchCase, backend: str, tuning_logs, log) -> Path:
    """The TVM library of `backend` for the case, built and verified once and then cached."""
    from . import manifest as manifest_io
    from .build import BuildRequest, build_library
    from .targets import get_target
    from .tuning_log import database_summary
    from .verify import verify_library

    height, width = case.input_size
    tag = {"tvm-untuned": "untuned", "tvm-ours": "ours", "tvm-tuned": "tuned"}[backend]
    out = BENCH_DIR / f"parcnetv2_{case.model}-{case.target}-{height}x{width}-b{case.batch}-{tag}.so"
    request = BuildRequest(model=case.model, target=case.target, input_size=case.input_size, batch=case.batch,
                           output=str(out), tvm_default=backend == "tvm-untuned",
                           tuning_log=list(tuning_logs) if backend == "tvm-tuned" else None)
    if out.is_file() and out.with_suffix(".json").is_file():
        # Reused only if built by this pipeline from the same logs (same records), else rebuilt.
        manifest = manifest_io.read(out)
        wanted = [database_summary(p) for p in tuning_logs] if backend == "tvm-tuned" else []
        have = (manifest.get("tuning_database") or {}).get("logs", [])
        current = have == wanted and manifest.get("pipeline") == manifest_io.pipeline_fingerprint()
        status = manifest["verification"]["status"]
        if current and status == "skipped" and get_target(case.target).why_not_runnable_here() is None:
            verify_library(out)  # built where it could not run (a CUDA library without a GPU): check it now
            return out
        if current and status in ("passed", "skipped"):
            return out
    log(f"[bench] building {out.name}")
    build_library(request, log=lambda *_: None)
    return out


def prepare_onnx(case: BenchCase) -> Path:
    from .build import prepare_model
    from .frontend import export_onnx

    height, width = case.input_size
    out = BENCH_DIR / f"parcnetv2_{case.model}-{height}x{width}-b{case.batch}.onnx"
    if not out.is_file():
        import onnx

        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(export_onnx(prepare_model(case.model, case.input_size), (case.batch, 3, height, width)), str(out))
    return out


def default_tuning_logs(case: BenchCase) -> list[Path]:
    from .tuning_log import default_work_dir, has_log

    log_dir = default_work_dir(case.model, case.target, case.input_size, case.batch)
    return [log_dir] if has_log(log_dir) else []


@dataclass
class Board:
    """How bench reaches the ARM board: a session factory, and whether it is the emulated one
    (then libraries are checked, never timed)."""

    connect: object
    where: str
    emulated: bool = False


def time_on_board(board: Board, library: Path, x, repeat: int) -> tuple:
    """Upload `library`, run it once on `x` (output back here) and, on a real board, time
    `repeat` calls; returns (output, timing dict or None)."""
    import tvm
    from tvm import relax

    from .timing import summarize_ms

    remote = board.connect()
    remote.upload(str(library))
    device = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module(library.name), device)
    vm.set_input("main", tvm.runtime.tensor(x, device))
    vm.invoke_stateful("main")
    output = vm.get_outputs("main").numpy()
    if board.emulated:
        return output, None
    # one call per sample, after the call above warmed up the board's memory pools
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeat)
    return output, summarize_ms([seconds * 1e3 for seconds in timer("main").results])


def _new_row(case: BenchCase, backend: str) -> dict:
    row = {"model": f"parcnetv2_{case.model}", "target": case.target, "batch": case.batch,
           "input_size": list(case.input_size), "backend": backend, "median_ms": None, "p90_ms": None,
           "peak_mem_mb": None, "speedup_vs_pytorch": None}
    if case.target == "cuda":
        row["gpu"] = gpu_name()
    return row


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


def _skip(row: dict, reason: str, log) -> dict:
    row["skipped"] = reason
    log(f"[bench] {row['model']} b{row['batch']} {row['backend']}: skipped ({reason})")
    return row


def bench_case(case: BenchCase, backends, repeat: int, threads: int, max_seconds: float, tuning_logs=None,
               log=print, board: Board | None = None, pytorch_ms: float | None = None) -> list[dict]:
    """Rows for one (model, batch): every backend timed in turn, or marked skipped with why.
    With `board` (ARM) the TVM libraries run there and `pytorch_ms` is the user's board time."""
    rows = []
    logs = list(tuning_logs) if tuning_logs else default_tuning_logs(case)
    reference = _board_reference(case) if board else None
    for backend in backends:
        row = _new_row(case, backend)
        reason = missing_backend(backend, case.target)
        if backend == "tvm-tuned" and not logs:
            reason = (f"no tuning log for {case.model} at this size and batch (tune it: scripts/tune.py "
                      f"--target {case.target} --model {case.model} --batch {case.batch}, or pass --tuning-log)")
        if reason:
            rows.append(_skip(row, reason, log))
            continue
        try:
            library = prepare_library(case, backend, logs, log) if backend in TVM_BACKENDS else None
            if board:
                result = _bench_on_board(backend, library, board, reference, repeat, pytorch_ms)
            else:
                spec = {"backend": backend, "model": case.model, "batch": case.batch, "target": case.target,
                        "input_size": list(case.input_size), "threads": threads, "repeat": repeat,
                        "max_seconds": max_seconds, "library": str(library) if library else None}
                if backend == "onnxruntime":
                    spec["onnx"] = str(prepare_onnx(case))
                result = _run_worker(spec)
        except (ParcnetError, RuntimeError) as err:
            rows.append(_skip(row, str(err), log))
            continue
        row.update({k: result[k] for k in ("median_ms", "p90_ms", "peak_mem_mb", "repeat", "max_abs_error",
                                           "source") if k in result})
        log(f"[bench] {row['model']} b{case.batch} {backend}: " + _describe(row))
        rows.append(row)
    eager = next((r["median_ms"] for r in rows if r["backend"] == "pytorch-eager" and r["median_ms"]), None)
    for row in rows:
        if eager and row["median_ms"]:
            row["speedup_vs_pytorch"] = round(eager / row["median_ms"], 3)
    return rows


def _describe(row: dict) -> str:
    if row["median_ms"] is None:
        return f"output matches PyTorch (max abs error {row['max_abs_error']:.1e}); emulated, not timed"
    text = f"{row['median_ms']:.2f} ms"
    if row.get("repeat"):
        text += f" (p90 {row['p90_ms']:.2f}, {row['repeat']} runs)"
    if row.get("peak_mem_mb") is not None:
        text += f", peak +{row['peak_mem_mb']:.0f} MB"
    return text + (f" [{row['source']}]" if row.get("source") else "")


def _board_reference(case: BenchCase):
    from .build import prepare_model
    from .verify import pytorch_output, reference_input

    x = reference_input((case.batch, 3, *case.input_size))
    return x, pytorch_output(prepare_model(case.model, case.input_size), x)


def _bench_on_board(backend: str, library, board: Board, reference, repeat: int, pytorch_ms) -> dict:
    from .verify import compare

    if backend == "pytorch-eager":
        if board.emulated:
            raise ParcnetError("nothing is timed on the emulated board")
        if pytorch_ms is None:
            raise ParcnetError("PyTorch does not run through RPC: time it on the board and pass --pytorch-ms")
        return {"median_ms": pytorch_ms, "p90_ms": pytorch_ms, "source": "given with --pytorch-ms"}
    x, expected = reference
    output, timing = time_on_board(board, library, x, repeat)
    check = compare(output, expected)
    if check["status"] != "passed":
        raise ParcnetError(f"output on the board differs from PyTorch: "
                           f"{check.get('reason') or 'max abs error %.2e' % check['max_abs_error']}")
    return {**(timing or {"median_ms": None, "p90_ms": None}), "max_abs_error": check["max_abs_error"]}


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

    from .targets import cpu_model_name, get_target, host_cores

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
    return (f"{cpu_model_name()}, {host_cores()} cores, {threads} threads; {platform.system()} {platform.machine()}; "
            f"{versions}, onnxruntime {ort}")


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(rows: list[dict], header: str) -> str:
    if rows and all(r["median_ms"] is None for r in rows if not r.get("skipped")) and \
            any("max_abs_error" in r for r in rows):  # the emulated board: correctness only
        lines = [f"Machine: {header}", "", "| model | batch | backend | output vs PyTorch (max abs error) |",
                 "|---|---|---|---|"]
        for r in rows:
            what = f"skipped: {r['skipped']}" if r.get("skipped") else f"matches ({r['max_abs_error']:.1e})"
            lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {what} |")
        return "\n".join(lines)
    lines = [f"Machine: {header}", "",
             "| model | batch | backend | median ms | p90 ms | peak mem MB | speedup vs pytorch-eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | skipped: {r['skipped']} | | | |")
            continue
        speed = f"{r['speedup_vs_pytorch']:.2f}x" if r["speedup_vs_pytorch"] else ""
        median = f"{r['median_ms']:.2f}" + (f" ({r['source']})" if r.get("source") else "")
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {median} | {_cell(r['p90_ms'], '.2f')} | "
                     f"{_cell(r['peak_mem_mb'], '.0f')} | {speed} |")
    return "\n".join(lines)


def json_rows(rows: list[dict]) -> list[dict]:
    keys = ("model", "target", "batch", "input_size", "backend", "median_ms", "p90_ms", "peak_mem_mb",
            "speedup_vs_pytorch")
    extra = ("skipped", "max_abs_error", "source", "gpu")
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


if __name__ == "__main__":  # the worker entry point
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
