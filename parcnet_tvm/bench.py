"""Benchmark stage: our libraries against PyTorch and the peers a user would pick, side by side.

Each (model, batch, backend) is timed in a fresh worker process (`python -m parcnet_tvm.bench
--worker ...`), one after the other, at the same thread count: warm-up, then the median and
p90 of the repeats. A fresh process per backend is what makes the memory column honest:
`peak_mem_mb` is the peak resident memory (VmHWM in /proc/self/status) minus the resident memory
the worker had after importing torch, TVM and ONNX Runtime and before creating the backend,
i.e. what the backend itself added at its peak: weights, activations, workspaces, compiled code.

TVM libraries are built (and verified against PyTorch, like every library of the pipeline)
by the parent and cached under build/bench/; ONNX files likewise.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ParcnetError

BACKENDS = ("pytorch-eager", "torch-compile", "onnxruntime", "tvm-untuned", "tvm-ours", "tvm-tuned")
TVM_BACKENDS = ("tvm-untuned", "tvm-ours", "tvm-tuned")
BENCH_DIR = Path("build") / "bench"


@dataclass
class BenchCase:
    model: str
    batch: int
    input_size: tuple[int, int]
    target: str = "x86"


def missing_backend(backend: str) -> str | None:
    """Why an optional backend cannot run here, or None."""
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install -e '.[bench]')"
    if backend == "torch-compile":
        import shutil

        if shutil.which("g++") is None and shutil.which("gcc") is None:
            return "torch.compile needs a C++ compiler (apt-get install g++)"
    return None


# ---------------------------------------------------------------- the worker (one backend)

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    # VmHWM: this process's own resident high-water mark. (getrusage's ru_maxrss is not: a
    # child inherits its parent's at fork, and the parent builds libraries of ~700 MB.)
    return _status_mb("VmHWM")


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
    try:
        import onnxruntime  # noqa: F401  (imported before the baseline, like torch and TVM)
    except ImportError:
        pass
    import tvm

    baseline = _rss_mb()
    if backend in ("pytorch-eager", "torch-compile"):
        model = prepare_model(spec["model"], spec["input_size"])
        if backend == "torch-compile":
            model = torch.compile(model)
        x_torch = torch.from_numpy(x)

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

        device = tvm.cpu(0)
        main = load_vm(spec["library"], device)["main"]
        x_tvm = tvm.runtime.tensor(x, device)

        def run():
            return main(x_tvm)
    run()  # first call (compiles for torch.compile) is not timed
    started = time.perf_counter()
    run()
    one = time.perf_counter() - started
    repeat = max(2, min(spec["repeat"], int(spec["max_seconds"] / max(one, 1e-6))))
    timing = measure_ms(run, repeat=repeat, warmup=1)
    return {**timing, "peak_mem_mb": round(_peak_rss_mb() - baseline, 1), "rss_before_mb": round(baseline, 1)}


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

    height, width = case.input_size
    tag = {"tvm-untuned": "untuned", "tvm-ours": "ours", "tvm-tuned": "tuned"}[backend]
    out = BENCH_DIR / f"parcnetv2_{case.model}-{case.target}-{height}x{width}-b{case.batch}-{tag}.so"
    request = BuildRequest(model=case.model, target=case.target, input_size=case.input_size, batch=case.batch,
                           output=str(out), tvm_default=backend == "tvm-untuned",
                           tuning_log=list(tuning_logs) if backend == "tvm-tuned" else None)
    if out.is_file() and out.with_suffix(".json").is_file():
        manifest = manifest_io.read(out)
        wanted = [str(Path(p).resolve()) for p in tuning_logs] if backend == "tvm-tuned" else []
        have = [entry["path"] for entry in (manifest.get("tuning_database") or {}).get("logs", [])]
        if manifest["verification"]["status"] == "passed" and have == wanted:
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


def bench_case(case: BenchCase, backends, repeat: int, threads: int, max_seconds: float, tuning_logs=None,
               log=print) -> list[dict]:
    """Rows for one (model, batch): every backend timed in turn, or marked skipped with why."""
    rows = []
    logs = list(tuning_logs) if tuning_logs else default_tuning_logs(case)
    for backend in backends:
        row = {"model": f"parcnetv2_{case.model}", "target": case.target, "batch": case.batch,
               "input_size": list(case.input_size), "backend": backend, "median_ms": None, "p90_ms": None,
               "peak_mem_mb": None, "speedup_vs_pytorch": None}
        reason = missing_backend(backend)
        if backend == "tvm-tuned" and not logs:
            reason = (f"no tuning log for {case.model} at this size and batch (tune it: scripts/tune.py "
                      f"--model {case.model} --batch {case.batch}, or pass --tuning-log)")
        if reason:
            row["skipped"] = reason
            log(f"[bench] {row['model']} b{case.batch} {backend}: skipped ({reason})")
            rows.append(row)
            continue
        spec = {"backend": backend, "model": case.model, "batch": case.batch, "input_size": list(case.input_size),
                "threads": threads, "repeat": repeat, "max_seconds": max_seconds}
        try:
            if backend in TVM_BACKENDS:
                spec["library"] = str(prepare_library(case, backend, logs, log))
            if backend == "onnxruntime":
                spec["onnx"] = str(prepare_onnx(case))
            result = _run_worker(spec)
        except ParcnetError as err:
            row["skipped"] = str(err)
            log(f"[bench] {row['model']} b{case.batch} {backend}: skipped ({err})")
            rows.append(row)
            continue
        row.update(median_ms=result["median_ms"], p90_ms=result["p90_ms"], peak_mem_mb=result["peak_mem_mb"],
                   repeat=result["repeat"])
        log(f"[bench] {row['model']} b{case.batch} {backend}: {row['median_ms']:.2f} ms "
            f"(p90 {row['p90_ms']:.2f}, {row['repeat']} runs), peak +{row['peak_mem_mb']:.0f} MB")
        rows.append(row)
    eager = next((r["median_ms"] for r in rows if r["backend"] == "pytorch-eager" and r["median_ms"]), None)
    for row in rows:
        if eager and row["median_ms"]:
            row["speedup_vs_pytorch"] = round(eager / row["median_ms"], 3)
    return rows


def machine_header(threads: int) -> str:
    import torch
    import tvm

    from .targets import cpu_model_name, host_cores

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    return (f"{cpu_model_name()}, {host_cores()} cores, {threads} threads; {platform.system()} {platform.machine()}; "
            f"torch {torch.__version__}, TVM {tvm.__version__}, onnxruntime {ort}")


def format_table(rows: list[dict], header: str) -> str:
    lines = [f"Machine: {header}", "",
             "| model | batch | backend | median ms | p90 ms | peak mem MB | speedup vs pytorch-eager |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | skipped: {r['skipped']} | | | |")
            continue
        speed = f"{r['speedup_vs_pytorch']:.2f}x" if r["speedup_vs_pytorch"] else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['peak_mem_mb']:.0f} | {speed} |")
    return "\n".join(lines)


def json_rows(rows: list[dict]) -> list[dict]:
    keys = ("model", "target", "batch", "input_size", "backend", "median_ms", "p90_ms", "peak_mem_mb",
            "speedup_vs_pytorch")
    return [{k: r[k] for k in keys} | ({"skipped": r["skipped"]} if r.get("skipped") else {}) for r in rows]


def plot(rows: list[dict], header: str, path) -> str | None:
    """Bar chart of median latency per backend per (model, batch), log scale. Returns None,
    or why no plot was made (matplotlib missing)."""
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
