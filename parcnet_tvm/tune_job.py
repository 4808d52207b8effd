"""The tune job (scripts/tune.py): tune a model's fused module into its log, then build and
verify the tuned library and time it against the untuned one and PyTorch. The machinery is
in `parcnet_tvm.tuning` (budget, measurement, progress, scheduler, tasks).

The tasks are the PrimFuncs of `build.fused_module` (after our op rewrite, legalization and
fusion), so the records apply to exactly what `build.py --tuning-log` compiles. MetaSchedule
searches with the XGBoost cost model, evolutionary search and the gradient task scheduler;
our op's PrimFuncs carry `schedule_rule = "oversized_conv"`, so their design space is the
hand schedule in `schedules/` with its tile sizes as knobs. Identical tasks are one task
(weight = how often they occur).

What a user can rely on:
- the log goes to a work dir of this model and DEVICE in the user's cache, outside the
  checkout (`tuning_log.default_work_dir`; `--work-dir` overrides): the logs shipped in
  `tuning_logs/` are never written, and a work dir another device measured is refused;
- resume: trials already in the work dir's log count against the budget; a task that has
  its per-task trials is not tuned again (a task cut off mid-way gets its remaining share);
- a killed run keeps every record: MetaSchedule appends one line per measured candidate;
- warm start: tasks that another log (read-only) already tuned are copied, not re-tuned; the
  shipped log of this model is one, but only logs measured on this device are used
  (`tuning.device`), the others are named in the output and left out;
- trials are measured one candidate at a time with nothing compiling beside them (on a
  2-core host, measuring while the next batch compiles made timings meaningless).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from . import board
from . import manifest as manifest_io
from .bench.compare import compare_with_pytorch, format_latency_table
from .build import BuildRequest, build_library, check_onnx_request
from .errors import ParcnetError
from .frontend import import_model, import_onnx_file
from .log_lock import writing
from .model import parse_input_size, variant_key
from .onnx_file import load_onnx_file
from .pipeline import PipelineOptions, fused_module
from .runtime import why_not_runnable
from .targets import NamedTarget, get_target, local_cuda_arch
from .tuning.budget import check_budget, default_budget
from .tuning.device import Device, check_tuning_into, device_for
from .tuning.measurement import local_measurement, rpc_measurement
from .tuning.progress import boards_line
from .tuning.tasks import extract_tasks, same_device_logs, tune_fused_module
from .tuning_log import default_work_dir, has_log, is_shipped, shipped_log
from .weights import prepare_model


@dataclass
class TuneRequest:
    model: str = "t"
    target: str = "x86"
    input_size: object = 224
    batch: int = 1
    checkpoint: str | None = None
    resize_kernels: bool = False       # the paper's 2H-1 kernels instead of the official lengths
    onnx: str | None = None            # tune and build the user's ONNX export instead of our model
    trials: int | None = None
    trials_per_task: int | None = None
    trials_per_iter: int | None = None
    time_budget: float | None = None   # minutes
    work_dir: str | None = None
    warm_start: tuple = ()
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    rpc: str | None = None
    emulate: int = 0                   # emulated boards to start (0: none)
    output: str | None = None
    only: tuple = ()                   # tune only tasks whose name contains one of these
    mcpu: str | None = None
    cuda_arch: str | None = None
    exact_math: bool = False
    compare: int = 5                   # repeats of the latency table (0: no table)
    seed: int | None = None
    design_space: str = "ours"         # ours: within our hand schedules where one applies; generic


BOARD_HOWTO = """no board given, so nothing was tuned for ARM: the library above uses our hand schedules{logs}.
To tune on your board (RK3288 or any ARMv7-A NEON board):
  1. copy the bundle's parcnet_rpc_server + libtvm_*.so to the board (scripts/package_arm.py)
  2. on this host:  python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
  3. on the board:  ./parcnet_rpc_server --tracker HOST_IP:9190 --key rk3288 --allow HOST_IP
  4. on this host:  python scripts/tune.py --target arm --model {model} --rpc-tracker HOST_IP:9190 --rpc-key rk3288
(or ./parcnet_rpc_server --port 9090 --bind BOARD_IP --allow HOST_IP on the board and --rpc BOARD_IP:9090 here)"""


def _check_request(request: TuneRequest, named: NamedTarget) -> None:
    board.check_board_args(request.rpc_tracker, request.rpc_key, request.rpc)
    check_budget(request.trials, request.trials_per_task, request.trials_per_iter, request.time_budget)
    if request.batch < 1:
        raise ParcnetError(f"--batch must be >= 1 (got {request.batch})")
    if request.emulate is not None and int(request.emulate) < 0:
        raise ParcnetError(f"--emulate {request.emulate}: give the number of emulated boards (1 or more)")
    if request.emulate and named.name != "arm":
        raise ParcnetError("--emulate runs the emulated ARM board: use it with --target arm")
    if request.emulate and (request.rpc or request.rpc_tracker):
        raise ParcnetError("--emulate starts its own emulated board: drop --rpc/--rpc-tracker")
    if (request.rpc or request.rpc_tracker) and named.name == "cuda":
        raise ParcnetError("CUDA tuning runs on a local GPU; --rpc/--rpc-tracker are for boards")
    for path in request.warm_start:
        if not Path(path).is_dir():
            raise ParcnetError(f"--warm-start {path}: no such folder (give a work dir tune.py wrote)")


@dataclass(frozen=True)
class TuneJob:
    """A tune request resolved once: what every stage of the run reads."""
    target: NamedTarget
    input_size: tuple
    model_key: str                 # the model's name in logs (xt, or onnx-<file stem>)
    onnx_model: object             # the loaded ONNX file, or None
    has_board: bool
    device: Device | None          # who measures the trials (None: nothing is tuned)
    work_dir: Path | None
    warm_start: tuple              # logs of this device that may warm-start it


def tune_model(request: TuneRequest, log=print) -> dict:
    """Tune (where the target can be measured), build, verify and time one model.
    Returns {"summary": TuneSummary | None, "manifest": ..., "library": path, "rows": table rows}."""
    job = resolve(request, log)
    # one writer per log, held through the tune and the build that reads it (tuning_log.writing)
    with writing(job.work_dir) if job.device else contextlib.nullcontext():
        summary = _tune(request, job, log) if job.device else None
        build, manifest = _build_tuned(request, job, log)
    library = build.output_path()
    result = {"summary": summary, "manifest": manifest, "library": str(library), "rows": []}
    if job.target.name == "arm" and not job.has_board:
        logs = build.tuning_logs()
        log(BOARD_HOWTO.format(model=job.model_key,
                               logs=f" and the log(s) {', '.join(map(str, logs))}" if logs else ""))
    if request.compare:
        result.update(_time_or_estimate(request, job, build, manifest, log))
    return result


def resolve(request: TuneRequest, log) -> TuneJob:
    """Check the request and resolve target, input, device and logs, before hours of tuning."""
    named = get_target(request.target, cuda_arch=request.cuda_arch, mcpu=request.mcpu)
    _check_request(request, named)
    named.check_toolchain()
    if request.rpc or request.rpc_tracker:
        board.check_reachable(request.rpc_tracker, request.rpc_key, request.rpc)
    check_onnx_request(request.onnx, request.checkpoint, request.resize_kernels)
    onnx_model = load_onnx_file(request.onnx, request.batch) if request.onnx else None
    input_size = tuple(onnx_model.input_shape[2:]) if onnx_model else parse_input_size(request.input_size)
    model_key = f"onnx-{onnx_model.name}" if onnx_model else variant_key(request.model)
    has_board = bool(request.rpc or request.rpc_tracker or request.emulate)
    will_tune = named.name == "x86" or (named.name == "arm" and has_board) or named.name == "cuda"
    device = device_for(named, request.rpc_tracker, request.rpc_key, request.rpc, bool(request.emulate)) \
        if will_tune else None
    work_dir, candidates = logs_of_run(model_key, named.name, input_size, request.batch, device,
                                       request.work_dir, request.warm_start)
    # where the log and the library go, checked before hours of tuning rather than after
    if work_dir:
        manifest_io.check_writable_folder(work_dir, "the tuning log" if request.work_dir else
                                          "the tuning log ($PARCNET_TVM_CACHE or --work-dir moves it)")
    manifest_io.check_output(_build_request(request, named, input_size, [], None).output_path())
    if named.name == "cuda" and not local_cuda_arch():
        raise ParcnetError("no CUDA GPU is visible here, so nothing can be tuned for CUDA. To build from an "
                           "existing log: python scripts/build.py --target cuda --tuning-log DIR")
    log(f"target: {named.description}; tuning log: {work_dir or 'none'}"
        + (f" (device {device.id})" if device else ""))
    warm_start = tuple(same_device_logs(candidates, device, log)) if device else ()
    return TuneJob(named, input_size, model_key, onnx_model, has_board, device, work_dir, warm_start)


def _tune(request: TuneRequest, job: TuneJob, log):
    """Import and fuse the model, then tune its tasks into the job's work dir."""
    started = time.perf_counter()
    if job.onnx_model:
        name, mod = job.onnx_model.path.name, import_onnx_file(job.onnx_model)
    else:
        model = prepare_model(request.model, job.input_size, request.checkpoint, request.resize_kernels)
        name, mod = model.variant.name, import_model(model, (request.batch, 3, *job.input_size), "torch")
    fused = fused_module(mod, job.target, PipelineOptions(exact_math=request.exact_math))
    log(f"[tune] model {name} {request.batch}x3x{job.input_size[0]}x{job.input_size[1]} imported "
        f"and fused in {time.perf_counter() - started:.1f} s")
    tasks = extract_tasks(fused, job.target, request.only)
    budget = default_budget(len(tasks), request.trials, request.trials_per_task, request.trials_per_iter,
                            request.time_budget)
    with board.chosen_board(request.emulate, request.rpc, request.rpc_tracker, request.rpc_key, log) as chosen:
        measurement = measurement_on(chosen, job.target)
        summary = tune_fused_module(fused, job.target, job.work_dir, budget, measurement, job.warm_start,
                                    request.only, request.seed, log, tasks=tasks,
                                    design_space=request.design_space)
    failed = f", {summary.trials_failed} of them failed ({summary.failure}): their tasks are tuned again " \
        "by a rerun" if summary.trials_failed else ""
    boards = f"; {boards_line(summary.trials_by_board)}" if summary.trials_by_board else ""
    log(f"[tune] {summary.trials_new} new trials{failed} in {summary.seconds / 60:.1f} min ({summary.stopped})"
        f"{boards}; log: {job.work_dir}")
    return summary


def _build_request(request: TuneRequest, named: NamedTarget, input_size, logs, device) -> BuildRequest:
    return BuildRequest(model=request.model, target=named.name, input_size=input_size,
                        batch=request.batch, checkpoint=request.checkpoint, resize_kernels=request.resize_kernels,
                        onnx=request.onnx, output=request.output,
                        cuda_arch=request.cuda_arch, mcpu=request.mcpu, tuning_log=logs, logs_must_apply=False,
                        exact_math=request.exact_math, device=device.id if device else None, named_target=named)


def _build_tuned(request: TuneRequest, job: TuneJob, log) -> tuple[BuildRequest, dict]:
    """Build and verify the library from the run's log and the warm-start logs."""
    logs = [job.work_dir] if job.work_dir and has_log(job.work_dir) else []
    logs += [Path(p) for p in job.warm_start if Path(p).resolve() not in {d.resolve() for d in logs}]
    build = _build_request(request, job.target, request.input_size, logs, job.device)
    return build, build_library(build, log=log)


def _time_or_estimate(request: TuneRequest, job: TuneJob, build: BuildRequest, manifest: dict, log) -> dict:
    """The latency table where the library runs here; the RK3288 estimate where only an
    emulated board does; where to time it otherwise."""
    library, named = build.output_path(), job.target
    if job.onnx_model:
        log("latency: the table compares with PyTorch eager, which an --onnx build does not have; "
            f"time {library} with scripts/bench.py")
    elif not named.emulated and why_not_runnable(named) is None:
        return {"rows": compare_untuned_tuned_pytorch(build, manifest, request.compare, log)}
    elif named.emulated and job.has_board and not request.emulate:
        log("latency: time it on the board (a measurement, not the estimate): scripts/bench.py --target arm "
            "--rpc-tracker HOST:PORT --rpc-key KEY, or parcnet_runner LIB.so --input x.raw --repeat 50")
    elif named.emulated:  # no real board: the RK3288 estimate is all there is
        from .estimate import estimate_library

        log("[estimate] counting the library's work on the emulated board at 4 and 1 threads (minutes at 224)")
        estimate = estimate_library(library, manifest["input_shape"])
        log(estimate["line"])
        log("latency: not measured here (emulated time is not latency); time it on the board: "
            "parcnet_runner LIB.so --input x.raw --repeat 50")
        return {"estimate": estimate}
    return {}


def logs_of_run(model_key: str, target: str, input_size, batch: int, device: Device | None, work_dir=None,
                warm_start=()) -> tuple[Path | None, list[Path]]:
    """The run's work dir (default: this model's and device's folder in the cache) and the logs
    that may warm-start it: those given, then the shipped one (`same_device_logs` keeps those
    `device` measured). Refuses a shipped log or another device's log as the work dir.
    `device` None (ARM without a board): nothing is tuned, so no default work dir."""
    if device is None:
        return (Path(work_dir) if work_dir else None), []
    default = default_work_dir(model_key, target, input_size, batch, device.id)
    work = Path(work_dir) if work_dir else default
    if is_shipped(work):
        raise ParcnetError(f"{work} is a log shipped with the checkout, which tuning never writes to: drop "
                           f"--work-dir (the default for this device is {default}); a shipped log of this device "
                           "is read as a warm start")
    check_tuning_into(work, device)
    shipped = shipped_log(model_key, target, input_size, batch)
    candidates = [Path(p) for p in warm_start] + ([shipped] if has_log(shipped) else [])
    seen, logs = {work.resolve()}, []
    for path in candidates:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            logs.append(path)
    return work, logs


def measurement_on(chosen: board.ChosenBoard | None, named: NamedTarget):
    """Where trials are measured: this machine, or the chosen board through RPC."""
    if chosen is None:
        return local_measurement(named)
    return rpc_measurement(named, chosen.tracker, chosen.key, chosen.direct,
                           session_timeout=300 if chosen.emulated else 60, emulated=chosen.emulated,
                           boards=chosen.boards)


def compare_untuned_tuned_pytorch(build, manifest: dict, repeat: int, log) -> list[dict]:
    """Build the untuned baselines beside the tuned library and time all of them and PyTorch
    eager side by side (one process, same input and threads); prints and returns the table."""
    from dataclasses import replace


    library = build.output_path()
    baselines = []
    for suffix, changes in (("-ours", dict(tuning_log=None)),
                            ("-untuned", dict(tuning_log=None, tvm_default=True))):
        out = library.with_name(library.stem + suffix + ".so")
        log(f"[compare] building the baseline {out.name}")
        build_library(replace(build, output=str(out), **changes), log=lambda *_: None)
        baselines.append(out)
    rows = compare_with_pytorch(library, manifest, repeat=repeat, baselines=baselines)
    log(format_latency_table(rows, manifest))
    return rows
