"""Benchmark stage: our libraries against PyTorch and the peers a user would pick, side by side.

x86 and CUDA: each (model, batch, backend) is timed in a fresh worker process (`python -m
parcnet_tvm.bench --worker ...`), one after the other, at the same thread count: warm-up, then
the median and p90 of the repeats (CUDA: each run ends with a device synchronisation). With
`rounds` (--rounds) > 1 this is repeated in alternating rounds, every backend once per round in
the same order, each time in a fresh process; a row's median is the median of its round medians
(all kept as `round_medians_ms`), its p90 the median of the round p90s, its memory the highest
peak. The peers on x86 (OpenVINO, MNN, ncnn; peers.py) run fp32 models converted once and cached
under build/bench/; each worker checks the first output against PyTorch's (max abs error <=
1e-4, kept as `max_abs_error`) and is not timed if it differs: the row says by how much. A fresh
process per backend is what makes the memory column honest. `peak_mem_mb` on x86 is the peak
resident memory (VmHWM in /proc/self/status) minus the resident memory the worker had after
importing torch, TVM and ONNX Runtime and before creating the backend, i.e. what the backend
itself added at its peak: weights, activations, workspaces, compiled code. On CUDA it is the
GPU memory in use after the runs (cudaMemGetInfo) minus the same before the backend was made:
PyTorch's caching allocator and TVM's pooled allocator both keep their peak allocations.
`busy_threads` (JSON) counts the worker's threads that ran at least a quarter as long as the
busiest during the timed runs: what `--threads` gave each backend, TVM's included.

ARM: the TVM libraries are uploaded to the board through RPC, their output is checked against
PyTorch's (computed here), then they are timed there (`time_evaluator`, one call per sample).
PyTorch does not run through RPC: `--pytorch-ms` adds a time the user measured on the board.
The emulated board (qemu) checks correctness and gives the RK3288 estimate (estimate.py:
counted work and a cost model calibrated on published board times); emulated time is never shown.

TVM libraries are built (and verified against PyTorch, like every library of the pipeline)
by the parent and cached under build/bench/; ONNX files likewise. `tvm-tuned` applies only logs
measured on the device being timed (this CPU, the GPU, the board; `tuning.device`): by default
this device's tune.py work dir, else the shipped log if this device measured it; a log of
another device is a skipped row saying so, unless `any_device` (--any-device).

Modules: backends (what is compared), worker (one backend in a fresh process), cache (the
libraries and ONNX files), peers (the peer engines' converted models and PyTorch's output),
board (ARM through RPC), report (header, table, JSON, plot); the orchestration of one case is here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from .. import board, outputs
from ..errors import ParcnetError
from ..model import parse_input_size, variant_key
from ..targets import get_target, local_cuda_arch
from ..tuning.device import Device, check_build_log, device_for
from ..tuning_log import has_log
from .backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    PEER_BACKENDS,
    TVM_BACKENDS,
    BenchCase,
    missing_backend,
)
from .cache import BENCH_DIR, default_tuning_logs, prepare_library
from .on_board import Board, _bench_on_board, _board_reference
from .peers import model_files, pytorch_reference
from .report import _describe, format_table, gpu_name, json_rows, machine_header, plot
from .worker import _run_worker


def _new_row(case: BenchCase, backend: str) -> dict:
    row = {"model": f"parcnetv2_{case.model}", "target": case.target, "batch": case.batch,
           "input_size": list(case.input_size), "backend": backend, "median_ms": None, "p90_ms": None,
           "peak_mem_mb": None, "speedup_vs_pytorch": None}
    if case.target == "cuda":
        row["gpu"] = gpu_name()
    return row


def _skip(row: dict, reason: str, log) -> dict:
    row["skipped"] = reason
    log(f"[bench] {row['model']} b{row['batch']} {row['backend']}: skipped ({reason})")
    return row


def bench_case(case: BenchCase, backends, repeat: int, threads: int, max_seconds: float, tuning_logs=None,
               log=print, board: Board | None = None, pytorch_ms: float | None = None,
               device: Device | None = None, any_device: bool = False, rounds: int = 1) -> list[dict]:
    """Rows for one (model, batch): every backend timed, or marked skipped with why. Libraries and
    converted models are made first; then `rounds` rounds each time every backend once, in a fresh
    process, in the same order (x86, CUDA). With `board` (ARM) the TVM libraries run there, once,
    and `pytorch_ms` is the user's board time. `device`: what the libraries run on (default: this
    CPU or GPU); tvm-tuned applies only its logs."""
    rows, specs = [], {}
    device = device or device_for(get_target(case.target))
    logs = list(tuning_logs) if tuning_logs else default_tuning_logs(case, device)
    reference = _board_reference(case) if board else None
    peer_reference = functools.cache(lambda: str(pytorch_reference(case)))  # once per case, if a peer runs
    for backend in dict.fromkeys(backends):  # each once
        row = _new_row(case, backend)
        rows.append(row)
        reason = _why_not(backend, case, logs, device, any_device, log)
        if reason:
            _skip(row, reason, log)
            continue
        try:
            library = prepare_library(case, backend, logs, log, getattr(device, "id", None), any_device) \
                if backend in TVM_BACKENDS else None
            if board:
                _record(row, _bench_on_board(backend, library, board, reference, repeat, pytorch_ms))
                if board.emulated and library is not None:
                    _add_estimate(row, library, case, log)
                log(f"[bench] {row['model']} b{case.batch} {backend}: " + _describe(row))
            else:
                specs[backend] = _worker_spec(case, backend, library, threads, repeat, max_seconds, log)
                if backend in PEER_BACKENDS:
                    specs[backend]["reference"] = peer_reference()
        except (ParcnetError, RuntimeError) as err:
            _skip(row, str(err), log)
    _time_in_rounds(rows, specs, rounds, log)
    eager = next((r["median_ms"] for r in rows if r["backend"] == "pytorch-eager" and r["median_ms"]), None)
    for row in rows:
        if eager and row["median_ms"]:
            row["speedup_vs_pytorch"] = round(eager / row["median_ms"], 3)
    return rows


def _why_not(backend: str, case: BenchCase, logs, device, any_device: bool, log) -> str | None:
    """Why `backend` cannot be timed for this case (a skipped row's reason), or None."""
    if backend == "tvm-tuned" and not logs:
        return (f"no tuning log of this device ({getattr(device, 'id', 'no board')}) for {case.model} at this "
                f"size and batch (tune it: scripts/tune.py --target {case.target} --model {case.model} "
                f"--batch {case.batch}, or pass --tuning-log)")
    if backend == "tvm-tuned":  # here, not only in the build: a cached library is not rebuilt
        return _foreign_log(logs, case, device, any_device, log)
    return missing_backend(backend, case.target, case.batch)


def _worker_spec(case: BenchCase, backend: str, library, threads: int, repeat: int, max_seconds: float,
                 log) -> dict:
    """What a worker process needs to time `backend` (a peer's model converted, once)."""
    return {"backend": backend, "model": case.model, "batch": case.batch, "target": case.target,
            "input_size": list(case.input_size), "threads": threads, "repeat": repeat,
            "max_seconds": max_seconds, "library": str(library) if library else None,
            **model_files(case, backend, log)}


def _time_in_rounds(rows: list[dict], specs: dict, rounds: int, log) -> None:
    """Each round times every backend of `specs` once, each in a fresh process, in the same order:
    a noisy machine's drift falls on every backend alike. A backend that fails is skipped."""
    by_backend = {row["backend"]: row for row in rows}
    results = {backend: [] for backend in specs}
    for index in range(rounds):
        for backend, spec in specs.items():
            row = by_backend[backend]
            if row.get("skipped"):
                continue
            try:
                results[backend].append(_run_worker(spec))
            except (ParcnetError, RuntimeError) as err:
                _skip(row, str(err), log)
                continue
            if rounds > 1:
                log(f"[bench] {row['model']} b{row['batch']} {backend}: round {index + 1}/{rounds}: "
                    f"{results[backend][-1]['median_ms']:.2f} ms")
    for backend, done in results.items():
        row = by_backend[backend]
        if not row.get("skipped"):
            _record(row, combine_rounds(done))
            log(f"[bench] {row['model']} b{row['batch']} {backend}: " + _describe(row))


def combine_rounds(results: list[dict]) -> dict:
    """One row's figures from its rounds' results: the median of the round medians (and of their
    p90s), every round's median, the highest peak memory, busy thread count and error, all runs."""
    import numpy as np

    medians = [r["median_ms"] for r in results]
    combined = {"median_ms": float(np.median(medians)), "round_medians_ms": [round(m, 4) for m in medians]}
    if results[0].get("p90_ms") is not None:
        combined["p90_ms"] = float(np.median([r["p90_ms"] for r in results]))
    for key in ("peak_mem_mb", "busy_threads", "max_abs_error"):
        if results[0].get(key) is not None:
            combined[key] = max(r[key] for r in results)
    if results[0].get("repeat"):
        combined["repeat"] = sum(r["repeat"] for r in results)
    if results[0].get("source"):
        combined["source"] = results[0]["source"]
    return combined


def _record(row: dict, combined: dict) -> None:
    row.update({k: combined[k] for k in ("median_ms", "p90_ms", "peak_mem_mb", "repeat", "max_abs_error",
                                         "source", "busy_threads", "round_medians_ms") if k in combined})


def _foreign_log(logs, case: BenchCase, device: Device | None, any_device: bool, log) -> str | None:
    """Why tvm-tuned may not use these logs on `device` (None: it may)."""
    try:
        for log_dir in logs:
            check_build_log(log_dir, get_target(case.target), getattr(device, "id", None), any_device, log)
    except ParcnetError as err:
        return str(err)
    return None


def _add_estimate(row: dict, library, case: BenchCase, log) -> None:
    """The RK3288 estimate of a library checked on the emulated board (never a latency)."""
    from ..estimate import estimate_library

    log(f"[bench] {row['model']} b{case.batch} {row['backend']}: counting on the emulated board (4 and 1 threads)")
    estimate = estimate_library(library, (case.batch, 3, *case.input_size))
    row["rk3288_estimate_ms"], row["rk3288_estimate_ms_1t"] = estimate["ms_4t"], estimate["ms_1t"]
    row["rk3288_footprint_mib"] = estimate["footprint_mib"]["total"]
    log(f"[bench] {row['model']} b{case.batch} {row['backend']}: {estimate['line']}")


@dataclass
class BenchRequest:
    target: str = "x86"
    model: list = field(default_factory=lambda: ["xt", "t"])
    batch: list = field(default_factory=lambda: [1])
    input_size: str = "224"
    repeat: int = 30
    rounds: int = 3  # x86, CUDA: every backend timed once per round, fresh process each (bench_case)
    max_seconds: float = 60
    threads: int = 1
    backends: list | None = None
    tuning_log: list = field(default_factory=list)
    json: str | None = None
    plot: str | None = None
    emulate: bool = False
    rpc: str | None = None
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    pytorch_ms: list = field(default_factory=list)
    any_device: bool = False  # tvm-tuned may apply logs measured on another device


def parse_pytorch_ms(values, models, batches) -> dict:
    """{(model, batch): ms} from MS (one model and batch), MODEL=MS or MODEL@BATCH=MS."""
    given = {}
    for value in values:
        key, _, ms = value.rpartition("=")
        try:
            ms = float(ms)
        except ValueError:
            raise ParcnetError(f"--pytorch-ms {value!r}: expected [MODEL[@BATCH]=]MS, e.g. 812 or xt=812") from None
        if not key:
            if len(models) * len(batches) != 1:
                raise ParcnetError("--pytorch-ms MS is ambiguous with several models or batches: "
                                   "give MODEL=MS or MODEL@BATCH=MS")
            given[(models[0], batches[0])] = ms
            continue
        model, _, batch = key.partition("@")
        for b in ([int(batch)] if batch.isdigit() else batches):
            given[(variant_key(model), b)] = ms
    return given


def check_request(args: BenchRequest):
    named = get_target(args.target)
    if args.repeat < 2 or args.threads < 1 or args.rounds < 1:
        raise ParcnetError("--repeat must be >= 2, --threads >= 1 and --rounds >= 1")
    if any(batch < 1 for batch in args.batch):
        raise ParcnetError(f"--batch {args.batch}: every batch must be >= 1")
    board.check_board_args(args.rpc_tracker, args.rpc_key, args.rpc)
    on_board = bool(args.rpc or args.rpc_tracker or args.emulate)
    if named.name != "arm" and (on_board or args.pytorch_ms):
        raise ParcnetError("--rpc/--rpc-tracker/--emulate/--pytorch-ms are for --target arm (a board)")
    if named.name == "arm" and not on_board:
        raise ParcnetError("bench.py --target arm times libraries on the board: give --rpc-tracker HOST:PORT "
                           "--rpc-key KEY or --rpc HOST:PORT (or --emulate to check correctness under qemu)")
    if args.emulate and (args.rpc or args.rpc_tracker):
        raise ParcnetError("--emulate starts its own emulated board: drop --rpc/--rpc-tracker")
    if args.emulate and args.pytorch_ms:
        raise ParcnetError("--emulate checks correctness and shows no times: drop --pytorch-ms")
    if named.name == "cuda" and not local_cuda_arch():
        raise ParcnetError("bench.py --target cuda needs an NVIDIA GPU, and none is visible on this machine "
                           "(build CUDA libraries here with build.py --target cuda; time them on the GPU machine)")
    for log_dir in args.tuning_log:
        if not has_log(log_dir):
            raise ParcnetError(f"--tuning-log {log_dir}: no tuning log there (a work dir of scripts/tune.py)")
    return named


def run_bench(args: BenchRequest, log=print) -> list[dict]:
    """Every (batch, model) of the request on every backend, printed as one table (and written
    as JSON and a plot when asked); returns the rows."""
    named = check_request(args)
    size = parse_input_size(args.input_size)
    models = [variant_key(m) for m in args.model]
    pytorch_ms = parse_pytorch_ms(args.pytorch_ms, models, args.batch)
    backends = args.backends or DEFAULT_BACKENDS[named.name]
    if args.rpc or args.rpc_tracker:  # after the arguments, before any build: a wrong address fails in seconds
        board.check_reachable(args.rpc_tracker, args.rpc_key, args.rpc)
    rows = []
    with board.chosen_board(args.emulate, args.rpc, args.rpc_tracker, args.rpc_key, log) as chosen:
        the_board = None if chosen is None else Board(
            functools.partial(board.connect, chosen.tracker, chosen.key, chosen.direct, session_timeout=600),
            chosen.where, chosen.emulated)
        device = device_for(named) if chosen is None else \
            device_for(named, chosen.tracker, chosen.key, chosen.direct, chosen.emulated)
        for batch in args.batch:
            for model in models:
                rows += bench_case(BenchCase(model, batch, size, named.name), backends, args.repeat, args.threads,
                                   args.max_seconds, args.tuning_log or None, log, board=the_board,
                                   pytorch_ms=pytorch_ms.get((model, batch)), device=device,
                                   any_device=args.any_device, rounds=args.rounds)
        header = machine_header(args.threads, named.name, the_board)
        if the_board is None and args.rounds > 1:
            header += f"; {args.rounds} alternating rounds, median of the round medians"
    log(format_table(rows, header))
    if args.json:
        outputs.write_text(args.json, json.dumps(json_rows(rows), indent=1))
        log(f"rows written to {args.json}")
    if args.plot:
        reason = plot(rows, header, args.plot)
        log(f"plot: skipped ({reason})" if reason else f"plot written to {args.plot}")
    return rows


__all__ = [
    "BACKENDS",
    "BENCH_DIR",
    "DEFAULT_BACKENDS",
    "TVM_BACKENDS",
    "BenchCase",
    "BenchRequest",
    "Board",
    "bench_case",
    "combine_rounds",
    "format_table",
    "gpu_name",
    "json_rows",
    "machine_header",
    "missing_backend",
    "plot",
    "run_bench",
]
