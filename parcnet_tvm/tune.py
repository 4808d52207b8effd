"""Tuning stage: MetaSchedule over the fused module of our pipeline, into a resumable log.

The tasks are the PrimFuncs of `build.fused_module` (after our op rewrite, legalization and
fusion), so the records apply to exactly what `build.py --tuning-log` compiles. MetaSchedule
searches with the XGBoost cost model, evolutionary search and the gradient task scheduler;
our op's PrimFuncs carry `schedule_rule = "oversized_conv"`, so their design space is the
hand schedule in `schedules/` with its tile sizes as knobs. Identical tasks are one task
(weight = how often they occur).

What a user can rely on:
- resume: trials already in the work dir's log count against the budget; a task that has
  its per-task trials is not tuned again (a task cut off mid-way gets its remaining share);
- a killed run keeps every record: MetaSchedule appends one line per measured candidate;
- warm start: tasks that another log (read-only) already tuned are copied, not re-tuned;
- trials are measured one candidate at a time with nothing compiling beside them (on a
  2-core host, measuring while the next batch compiles made timings meaningless).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler
from tvm.s_tir.meta_schedule.runner import (EvaluatorConfig, LocalRunner, PyRunner, PyRunnerFuture,
                                            RPCConfig, RPCRunner)
from tvm.s_tir.analysis import estimate_tir_flops

from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
from tvm.s_tir.meta_schedule.utils import fork_seed

from schedules import hand_rule_for, hand_rule_space, register_metaschedule_rules

from . import board
from .errors import ParcnetError
from .rewrite import PRIMFUNC_PREFIX
from .targets import ARM_CXX, NamedTarget, host_cores
from .tuning_log import copy_records, open_database, record_counts


# ---------------------------------------------------------------- budget and measurement

@dataclass
class TuneBudget:
    """How much to tune. `trials` is global; each task gets at most `trials_per_task`;
    MetaSchedule proposes `trials_per_iter` candidates per round (the first round visits
    every task once, so trials >= tasks * trials_per_iter is needed to reach them all)."""

    trials: int
    trials_per_task: int
    trials_per_iter: int = 8
    time_budget_min: float | None = None
    by_flops: bool = False  # per-task allowance by FLOP share, up to trials_per_task

    def __post_init__(self):
        for name in ("trials", "trials_per_task", "trials_per_iter"):
            if getattr(self, name) < 1:
                raise ParcnetError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise ParcnetError(f"--time-budget must be > 0 minutes (got {self.time_budget_min})")


# Per-task allowance by FLOP share (unless --trials-per-task is given): in ParCNetV2 a dozen
# GEMM tasks hold ~80% of the FLOPs and ~40 norm/reshape/transpose tasks under 1%. Each task
# may take up to twice its share of the global budget, between one round and MAX_ROUNDS.
SHARE_FACTOR = 2.0
MAX_ROUNDS = 32
BUDGET_FILE = "budget.json"


def task_flops(task) -> float:
    """A task's share of the model's work: how often it runs x FLOPs of one call."""
    return float(task.weight) * estimate_tir_flops(task.dispatched[0])


def task_trial_caps(flops: list[float], budget: TuneBudget) -> list[int]:
    """Trials each task may take: by its share of the model's FLOPs when `budget.by_flops`,
    else `budget.trials_per_task` for every task."""
    if not budget.by_flops:
        return [budget.trials_per_task] * len(flops)
    total = sum(flops) or 1.0
    per_iter = budget.trials_per_iter
    caps = []
    for f in flops:
        rounds = math.ceil(SHARE_FACTOR * budget.trials * f / total / per_iter)
        caps.append(min(per_iter * max(rounds, 1), budget.trials_per_task))
    return caps


def write_budget_record(work_dir: Path, tasks, caps: list[int], flops: list[float], budget: TuneBudget) -> None:
    """budget.json in the log: for every run (appended), the rule and each task's allowance."""
    total = sum(flops) or 1.0
    path = work_dir / BUDGET_FILE
    try:
        runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    except (ValueError, KeyError, TypeError):
        runs = []  # unreadable: start the record again rather than stop the tuning
    record = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rule": (f"by FLOP share: up to {SHARE_FACTOR:g}x the task's share of {budget.trials} trials, "
                 f"between {budget.trials_per_iter} and {budget.trials_per_task}" if budget.by_flops
                 else f"{budget.trials_per_task} trials per task"),
        "trials": budget.trials, "trials_per_iter": budget.trials_per_iter,
        "time_budget_min": budget.time_budget_min,
        "tasks": [{"task": t.task_name, "weight": int(t.weight), "flop_share": round(f / total, 5), "max_trials": c}
                  for t, c, f in zip(tasks, caps, flops)],
    }
    path.write_text(json.dumps({"runs": runs + [record]}, indent=1) + "\n")


def default_budget(n_tasks: int, trials=None, trials_per_task=None, trials_per_iter=None,
                   time_budget_min=None) -> TuneBudget:
    """Defaults sized for ParCNetV2 on a 2-core host: 8 candidates per task per round, each
    task's allowance by its FLOP share (up to MAX_ROUNDS rounds for the GEMMs; one round for
    a reshape) unless --trials-per-task sets one for all, and (unless --trials is given) a
    30-minute cap: XT and T at 224 on x86 have 66 tasks."""
    per_iter = trials_per_iter or 8
    return TuneBudget(trials=trials or 4 * per_iter * n_tasks,
                      trials_per_task=trials_per_task or MAX_ROUNDS * per_iter,
                      trials_per_iter=per_iter,
                      time_budget_min=30.0 if time_budget_min is None and trials is None else time_budget_min,
                      by_flops=trials_per_task is None)


@derived_object
class _FinishedFuture(PyRunnerFuture):
    def __init__(self, result):
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self):
        return self._result


@derived_object
class SerialRunner(PyRunner):
    """Waits for every measurement before MetaSchedule moves on (so nothing compiles while a
    candidate is timed on the same cores)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def run(self, runner_inputs):
        return [_FinishedFuture(future.result()) for future in self.inner.run(runner_inputs)]


def build_trial(mod, target, _params):
    """Compile one candidate. MetaSchedule's default builder first imports every GPU tensor
    intrinsic (21 s per build worker on this host, more than the builds themselves)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@derived_object
class PooledBuilder(PyBuilder):
    """LocalBuilder's work in worker processes that live across batches (starting Python and
    TVM costs ~2 s per worker); recycled every `recycle` batches against worker memory growth."""

    def __init__(self, max_workers: int, timeout_sec: float = 120, f_export=None, recycle: int = 25):
        super().__init__()
        self.max_workers, self.timeout_sec, self.f_export, self.recycle = max_workers, timeout_sec, f_export, recycle
        self.pool, self.batches = None, 0

    def build(self, build_inputs):
        from tvm.s_tir.meta_schedule.builder import local_builder
        from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

        if self.pool is None or self.batches >= self.recycle:
            if self.pool is not None:
                self.pool.shutdown()
            self.pool, self.batches = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec), 0
        self.batches += 1
        jobs = [(build_trial, self.f_export, b.mod, b.target, None) for b in build_inputs]
        results = []
        for done in self.pool.map_with_error_catching(lambda job: local_builder._worker_func(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {done.value}"))
        return results


def export_arm_artifact(mod) -> str:
    """Builder export for ARM trials: a shared library linked by the cross compiler (the board's
    RPC server loads .so files; it has no compiler to link MetaSchedule's default .tar)."""
    import tempfile

    from tvm.support import cc

    path = str(Path(tempfile.mkdtemp(prefix="parcnet-trial-")) / "trial.so")
    mod.export_library(path, fcompile=cc.cross_compiler(ARM_CXX))
    return path


def _trial_session(rpc_config: RPCConfig, tracker=None, key=None, direct=None):
    """RPCRunner's session factory (a picklable partial): board.connect with its retries."""
    return board.connect(tracker, key, direct, session_timeout=rpc_config.session_timeout_sec)


@dataclass
class Measurement:
    """Where trials are built and timed."""

    kind: str  # local | rpc | emulated
    builder: object
    runner: object
    where: str

    @property
    def emulated(self) -> bool:
        return self.kind == "emulated"


def local_measurement(named: NamedTarget) -> Measurement:
    # A GPU kernel takes microseconds: 10 ms of repeats time it well, and a short GPU loan
    # then measures several times as many candidates as with the CPUs' 50 ms.
    min_repeat_ms = 10 if named.name == "cuda" else 50
    runner = LocalRunner(timeout_sec=60, evaluator_config=EvaluatorConfig(number=3, repeat=1,
                                                                          min_repeat_ms=min_repeat_ms))
    return Measurement("local", PooledBuilder(host_cores()), SerialRunner(runner), f"this machine ({named.description})")


def rpc_measurement(named: NamedTarget, tracker: str | None = None, key: str | None = None,
                    direct: str | None = None, session_timeout: int = 60, emulated: bool = False) -> Measurement:
    """Builder and runner for a board reached through an RPC tracker (`tracker` + `key`) or
    directly (`direct` = HOST:PORT). ARM trials are cross-compiled to .so files."""
    board.check_board_args(tracker, key, direct)
    if not (direct or tracker):
        raise ParcnetError("an RPC measurement needs --rpc HOST:PORT or --rpc-tracker HOST:PORT --rpc-key KEY")
    host, port = board.parse_host_port(direct or tracker, "--rpc" if direct else "--rpc-tracker")
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key or "direct",
                       session_timeout_sec=session_timeout)
    create = functools.partial(_trial_session, tracker=tracker, key=key, direct=direct)
    where = f"RPC server {direct}" if direct else f"RPC tracker {tracker}, key {key}"
    evaluator = EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0) if emulated else \
        EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100)
    runner = RPCRunner(config, evaluator, f_create_session=create)
    export = export_arm_artifact if named.name == "arm" else None
    builder = PooledBuilder(host_cores(), f_export=export)
    return Measurement("emulated" if emulated else "rpc", builder,
                       SerialRunner(runner) if emulated else runner, where)


# ---------------------------------------------------------------- progress

def mean_run_seconds(result) -> float:
    """A measured candidate's mean time (RunnerResult.run_secs holds FloatImm or float)."""
    secs = [float(getattr(s, "value", s)) for s in result.run_secs]
    return sum(secs) / len(secs)


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


@derived_object
class TuningProgress(PyMeasureCallback):
    """One progress line per measured batch."""

    def __init__(self, weights, budget: TuneBudget, emulated: bool, log):
        super().__init__()
        self.weights = list(weights)
        self.budget = budget
        self.emulated = emulated
        self.log = log
        self.start = time.perf_counter()
        self.trials = 0
        self.build_errors = 0
        self.run_errors = 0
        self.best_ms: dict[int, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return  # an empty batch: the task's space is used up
        failed = []
        for built, ran in zip(builder_results, runner_results):
            self.trials += 1
            if built.error_msg:
                self.build_errors += 1
            elif ran.error_msg:
                self.run_errors += 1
                failed.append(str(ran.error_msg))
            else:
                ms_ = 1e3 * mean_run_seconds(ran)
                self.best_ms[task_id] = min(self.best_ms.get(task_id, ms_), ms_)
        if failed and len(failed) == len(runner_results):
            lines = [line.strip() for line in failed[0].splitlines() if line.strip()]
            reason = (lines[-1] if lines else failed[0])[:300]  # the exception, not the traceback
            self.log(f"warning: all {len(failed)} trials of this batch failed to run ({reason}); "
                     "if the board went away, its trials are recorded as failed: stop with Ctrl-C "
                     "and rerun the same command later to continue")
        self.log(self.status_line(task_scheduler))

    def status_line(self, task_scheduler) -> str:
        n_tasks = len(self.weights)
        elapsed = self.elapsed()
        eta = elapsed / max(self.trials, 1) * max(self.budget.trials - self.trials, 0)
        if self.budget.time_budget_min is not None:
            eta = min(eta, max(60 * self.budget.time_budget_min - elapsed, 0))
        if self.emulated:
            estimate = "emulated board: times are not latency"
        else:
            total = sum(self.weights[i] * ms_ for i, ms_ in self.best_ms.items())
            estimate = f"est. {total:.2f} ms for the measured tasks"
        errors = f", {self.build_errors} build / {self.run_errors} run errors" \
            if self.build_errors or self.run_errors else ""
        return (f"[tune] tasks measured {len(self.best_ms)}/{n_tasks} | trials {self.trials}/{self.budget.trials}{errors} | "
                f"{estimate} | elapsed {_fmt_duration(elapsed)}, ETA {_fmt_duration(eta)}")


# ---------------------------------------------------------------- task scheduling

@derived_object
class GradientScheduler(PyTaskScheduler):
    """MetaSchedule's gradient-based task scheduler, with two changes we need:

    - each batch is joined as soon as it is measured, so its records are committed at once
      (TVM's scheduler joins nothing until the first round over all tasks has ended: ~10
      minutes of trials that a killed run would lose on ParCNetV2);
    - each task has its own trial allowance (what resume left it), and the run stops at
      the time budget between batches.

    The choice is TVM's: first every task once (heaviest first), then the task whose weighted
    best latency is expected to fall most, from its history (alpha 0.2, window 3).
    """

    def __init__(self, weights, trials_left, deadline: float | None, alpha: float = 0.2, window: int = 3,
                 seed: int | None = None):
        super().__init__()
        import random

        self.weights, self.trials_left, self.deadline = list(weights), list(trials_left), deadline
        self.alpha, self.window = alpha, window
        self.rng = random.Random(seed)
        self.history: list[list[float]] = [[] for _ in self.weights]
        self.best = [float("inf")] * len(self.weights)
        self.used = [0] * len(self.weights)
        self.next_first_visit = 0
        self.pending: int | None = None
        self.exhausted: set[int] = set()
        self.out_of_time = False

    def _join_pending(self, tasks) -> None:
        i, self.pending = self.pending, None
        if i is None or tasks[i].is_terminated:  # terminated: it had nothing to measure
            return
        results = self._outer().join_running_task(i)
        if not results:  # the search found no new candidate: its space is used up
            self.exhausted.add(i)
        for result in results:
            self.used[i] += 1
            if result.error_msg is None and result.run_secs:
                self.best[i] = min(self.best[i], mean_run_seconds(result))
        self.history[i].append(self.best[i])

    def next_task_id(self) -> int:
        tasks = self._outer().tasks_
        self._join_pending(tasks)
        alive = [i for i in range(len(tasks)) if not tasks[i].is_terminated and i not in self.exhausted
                 and self.used[i] < self.trials_left[i]]
        if self.deadline is not None and time.time() >= self.deadline:
            self.out_of_time = bool(alive)
            alive = []
        if not alive:
            return -1
        while self.next_first_visit < len(tasks):
            i, self.next_first_visit = self.next_first_visit, self.next_first_visit + 1
            if i in alive:
                self.pending = i
                return i
        grads = [self._gradient(i) for i in alive]
        if max(grads) == min(grads):
            self.pending = self.rng.choice(alive)
        else:
            self.pending = alive[grads.index(max(grads))]
        return self.pending

    def _gradient(self, i: int) -> float:
        history, w = self.history[i], self.window
        if not history or history[-1] == float("inf"):
            return -1e9  # nothing valid measured yet
        best = history[-1]
        backward = (history[-1 - w] - best) / w if len(history) >= 1 + w else 0.0
        return (self.alpha * backward + (1 - self.alpha) * best / len(history)) * self.weights[i]


# ---------------------------------------------------------------- tuning

def extract_tasks(fused: tvm.IRModule, named: NamedTarget, only=None) -> list:
    """MetaSchedule's tasks of the fused module (identical PrimFuncs are one weighted task);
    `only`: keep tasks whose name contains one of these substrings."""
    tasks = ms.relax_integration.extract_tasks(fused, named.target, module_equality="structural")
    tasks = [t for t in tasks if not t.mod.attrs.get("tirx.is_scheduled", False)]
    # Heaviest first: the first round visits tasks in this order, so a short budget or a
    # time limit spends its trials where the FLOPs are.
    tasks.sort(key=lambda t: -task_flops(t))
    if only:
        tasks = [t for t in tasks if any(s in t.task_name for s in only)]
        if not tasks:
            raise ParcnetError(f"no task name contains any of {list(only)}")
    return tasks


@dataclass
class TuneSummary:
    work_dir: str
    tasks: int
    tuned_now: int = 0
    trials_before: int = 0
    trials_new: int = 0
    from_warm_start: int = 0
    records_copied: int = 0
    seconds: float = 0.0
    stopped: str = "finished"  # finished | time budget | nothing to do
    best_ms: dict = field(default_factory=dict)


DESIGN_SPACES = ("ours", "generic")


def task_contexts(tasks, named: NamedTarget, work_dir, design_space: str = "ours", seed: int | None = None):
    """One TuneContext per task, and the tasks' weights. Design space `ours`: a task that one of
    our hand rules schedules is searched within that schedule, its tile sizes the knobs (a small
    space that starts where the untuned build is); the other tasks, and every task under
    `generic`, get MetaSchedule's generic rules for the target."""
    if design_space not in DESIGN_SPACES:
        raise ParcnetError(f"unknown design space {design_space!r}: choose one of {', '.join(DESIGN_SPACES)}")
    register_metaschedule_rules(named.target)  # our op's annotated blocks, in the generic space
    contexts = []
    loggers = get_loggers_from_work_dir(str(work_dir), [t.task_name for t in tasks])
    for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks))):
        mod = task.dispatched[0]
        rule = hand_rule_for(mod["main"], named.target) if design_space == "ours" else None
        space = hand_rule_space(rule, named.target) if rule is not None else "post-order-apply"
        contexts.append(ms.TuneContext(
            mod=mod, target=task.target, space_generator=space,
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=256),
            task_name=task.task_name, logger=logger, rand_state=rand_state, num_threads=host_cores(),
        ).clone())
    return contexts, [task.weight for task in tasks]


def tune_fused_module(fused: tvm.IRModule, named: NamedTarget, work_dir, budget: TuneBudget,
                      measurement: Measurement, warm_start=(), only=None, seed: int | None = None,
                      log=print, tasks=None, design_space: str = "ours") -> TuneSummary:
    """Tune the fused module's tasks (`tasks`, if the caller extracted them already) into the JSON
    database in `work_dir` (created or resumed), each within `design_space` (see task_contexts)."""
    work_dir = Path(work_dir)
    database = open_database(work_dir, create=True, log=log)
    tasks = extract_tasks(fused, named, only) if tasks is None else tasks
    summary = TuneSummary(work_dir=str(work_dir), tasks=len(tasks))

    warm = set()
    for source_dir in warm_start:
        source = open_database(source_dir, log=log)
        for i, task in enumerate(tasks):
            mod = task.dispatched[0]
            if i in warm or not source.has_workload(mod):
                continue
            if database.has_workload(mod) and database.get_top_k(database.commit_workload(mod), 1):
                warm.add(i)  # copied on an earlier run
                continue
            copied = copy_records(source, database, mod)
            if copied:
                warm.add(i)
                summary.records_copied += copied
    summary.from_warm_start = len(warm)
    if warm:
        log(f"      warm start: {len(warm)} of {len(tasks)} tasks already tuned in {', '.join(map(str, warm_start))} "
            f"({summary.records_copied} records copied)")

    flops = [task_flops(t) for t in tasks]
    caps = task_trial_caps(flops, budget)
    write_budget_record(work_dir, tasks, caps, flops, budget)
    recorded = record_counts(database, tasks)
    summary.trials_before = sum(n for i, n in enumerate(recorded) if i not in warm)
    todo = [i for i in range(len(tasks)) if i not in warm and recorded[i] < caps[i]]
    remaining = budget.trials - summary.trials_before
    if summary.trials_before:
        log(f"      resuming: {summary.trials_before} trials already recorded in {work_dir}")
    if not todo or remaining <= 0:
        summary.stopped = "nothing to do"
        log("      nothing left to tune within the budget" + (
            " (raise --trials to tune further)" if todo else ""))
        return summary

    trials_left = [caps[i] - recorded[i] for i in todo]
    selected = [tasks[i] for i in todo]
    contexts, weights = task_contexts(selected, named, work_dir, design_space, seed)
    progress = TuningProgress(weights, TuneBudget(remaining, max(trials_left), budget.trials_per_iter,
                                                  budget.time_budget_min), measurement.emulated, log)
    deadline = time.time() + 60 * budget.time_budget_min if budget.time_budget_min else None
    scheduler = GradientScheduler(weights, trials_left, deadline, seed=seed)
    summary.tuned_now = len(selected)
    log(f"      tuning {len(selected)} tasks ({len(tasks) - len(selected)} need no trials): up to {remaining} "
        + (f"trials, {min(trials_left)}-{max(trials_left)} per task by FLOP share" if budget.by_flops
           else f"trials, {budget.trials_per_task} per task") + f", {budget.trials_per_iter} per round"
        + (f", stop after {budget.time_budget_min:g} min" if budget.time_budget_min else "")
        + f"; measured on {measurement.where}")
    _quiet_metaschedule_console()
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir),
        max_trials_global=remaining, max_trials_per_task=max(trials_left),
        num_trials_per_iter=budget.trials_per_iter,
        builder=measurement.builder, runner=measurement.runner, database=database,
        cost_model=ms.cost_model.XGBModel(num_tuning_cores=host_cores()),
        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress],
        task_scheduler=scheduler, module_equality="structural",
    )
    if scheduler.out_of_time:
        summary.stopped = "time budget"
        log(f"      time budget of {budget.time_budget_min:g} min reached: stopped (every record kept)")
    summary.trials_new = progress.trials
    summary.seconds = progress.elapsed()
    summary.best_ms = {selected[i].task_name: ms_ for i, ms_ in progress.best_ms.items()}
    return summary


def _quiet_metaschedule_console() -> None:
    """MetaSchedule logs every trial to the console; its per-task logs stay in work_dir/logs."""
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


# ---------------------------------------------------------------- the whole job (scripts/tune.py)

@dataclass
class TuneRequest:
    model: str = "t"
    target: str = "x86"
    input_size: object = 224
    batch: int = 1
    checkpoint: str | None = None
    trials: int | None = None
    trials_per_task: int | None = None
    trials_per_iter: int | None = None
    time_budget: float | None = None   # minutes
    work_dir: str | None = None
    warm_start: tuple = ()
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    rpc: str | None = None
    emulate: bool = False
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
  3. on the board:  ./parcnet_rpc_server --tracker HOST_IP:9190 --key rk3288
  4. on this host:  python scripts/tune.py --target arm --model {model} --rpc-tracker HOST_IP:9190 --rpc-key rk3288
(or ./parcnet_rpc_server --port 9090 on the board and --rpc BOARD_IP:9090 here)"""


def _check_request(request: TuneRequest, named: NamedTarget) -> None:
    board.check_board_args(request.rpc_tracker, request.rpc_key, request.rpc)
    for name in ("trials", "trials_per_task", "trials_per_iter"):
        if getattr(request, name) is not None and getattr(request, name) < 1:
            raise ParcnetError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(request, name)})")
    if request.time_budget is not None and request.time_budget <= 0:
        raise ParcnetError(f"--time-budget must be > 0 minutes (got {request.time_budget})")
    if request.batch < 1:
        raise ParcnetError(f"--batch must be >= 1 (got {request.batch})")
    if request.emulate and named.name != "arm":
        raise ParcnetError("--emulate runs the emulated ARM board: use it with --target arm")
    if request.emulate and (request.rpc or request.rpc_tracker):
        raise ParcnetError("--emulate starts its own emulated board: drop --rpc/--rpc-tracker")
    if (request.rpc or request.rpc_tracker) and named.name == "cuda":
        raise ParcnetError("CUDA tuning runs on a local GPU; --rpc/--rpc-tracker are for boards")
    for path in request.warm_start:
        if not Path(path).is_dir():
            raise ParcnetError(f"--warm-start {path}: no such folder (give a work dir tune.py wrote)")


def tune_model(request: TuneRequest, log=print) -> dict:
    """Tune (where the target can be measured), build, verify and time one model.
    Returns {"summary": TuneSummary | None, "manifest": ..., "library": path, "rows": table rows}."""
    from .build import BuildRequest, build_library, fused_module, prepare_model
    from .frontend import import_model
    from .model import parse_input_size, variant_key
    from .targets import get_target, local_cuda_arch
    from .tuning_log import default_work_dir, has_log

    named = get_target(request.target, cuda_arch=request.cuda_arch, mcpu=request.mcpu)
    _check_request(request, named)
    named.check_toolchain()
    input_size = parse_input_size(request.input_size)
    model_key = variant_key(request.model)
    suffix = "-emulated" if request.emulate else ""
    work_dir = Path(request.work_dir) if request.work_dir else \
        default_work_dir(model_key, named.name + suffix, input_size, request.batch)
    board = request.rpc or request.rpc_tracker or request.emulate
    will_tune = named.name == "x86" or (named.name == "arm" and board) or named.name == "cuda"
    if named.name == "cuda" and not local_cuda_arch():
        raise ParcnetError("no CUDA GPU is visible here, so nothing can be tuned for CUDA. To build from an "
                           "existing log: python scripts/build.py --target cuda --tuning-log DIR")
    log(f"target: {named.description}; tuning log: {work_dir}")

    summary = None
    if will_tune:
        started = time.perf_counter()
        model = prepare_model(request.model, input_size, request.checkpoint)
        mod = import_model(model, (request.batch, 3, *input_size), "torch")
        fused = fused_module(mod, named, exact_math=request.exact_math, log=log)
        log(f"[tune] model {model.variant.name} {request.batch}x3x{input_size[0]}x{input_size[1]} imported "
            f"and fused in {time.perf_counter() - started:.1f} s")
        tasks = extract_tasks(fused, named, request.only)
        budget = default_budget(len(tasks), request.trials, request.trials_per_task, request.trials_per_iter,
                                request.time_budget)
        with _measurement_for(request, named, log) as measurement:
            summary = tune_fused_module(fused, named, work_dir, budget, measurement, request.warm_start,
                                        request.only, request.seed, log, tasks=tasks,
                                        design_space=request.design_space)
        log(f"[tune] {summary.trials_new} new trials in {summary.seconds / 60:.1f} min ({summary.stopped}); "
            f"log: {work_dir}")

    logs = [work_dir] if has_log(work_dir) else []
    logs += [Path(p) for p in request.warm_start if Path(p).resolve() not in {d.resolve() for d in logs}]
    build = BuildRequest(model=request.model, target=named.name, input_size=request.input_size,
                         batch=request.batch, checkpoint=request.checkpoint, output=request.output,
                         cuda_arch=request.cuda_arch, mcpu=request.mcpu, tuning_log=logs,
                         exact_math=request.exact_math)
    manifest = build_library(build, log=log)
    library = build.output_path()
    result = {"summary": summary, "manifest": manifest, "library": str(library), "rows": []}
    if named.name == "arm" and not board:
        log(BOARD_HOWTO.format(model=model_key, logs=f" and the log(s) {', '.join(map(str, logs))}" if logs else ""))
    if request.compare and not named.emulated and named.why_not_runnable_here() is None:
        result["rows"] = compare_untuned_tuned_pytorch(build, manifest, request.compare, log)
    elif request.compare and named.emulated:
        log("latency: not measured here (ARM libraries run under emulation on this host, and emulated time "
            "is not latency); time it on the board: parcnet_runner LIB.so --input x.raw --repeat 50")
    return result


@contextlib.contextmanager
def _measurement_for(request: TuneRequest, named: NamedTarget, log):
    """The Measurement for the request, with the emulated board started and stopped around it
    when --emulate is given."""
    if request.emulate:
        with board.emulated_board(log) as tracker:
            yield rpc_measurement(named, tracker, board.EMULATED_KEY, session_timeout=300, emulated=True)
    elif request.rpc or request.rpc_tracker:
        yield rpc_measurement(named, request.rpc_tracker, request.rpc_key, request.rpc)
    else:
        yield local_measurement(named)


def compare_untuned_tuned_pytorch(build, manifest: dict, repeat: int, log) -> list[dict]:
    """Build the untuned baselines beside the tuned library and time all of them and PyTorch
    eager side by side (one process, same input and threads); prints and returns the table."""
    from dataclasses import replace

    from .build import build_library
    from .timing import compare_with_pytorch, format_latency_table

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


# ---------------------------------------------------------------- our op alone (bench_op)

def oversized_prim_funcs(mod: tvm.IRModule) -> tvm.IRModule:
    """The module's oversized-op PrimFuncs alone (one tuning task each)."""
    return tvm.IRModule({gv: func for gv, func in mod.functions_items()
                         if gv.name_hint.startswith(PRIMFUNC_PREFIX)})


def tune_oversized_ops(mod: tvm.IRModule, named_target: NamedTarget, work_dir, trials: int,
                       trials_per_iter: int = 8):
    """Tune only our op's PrimFuncs of a rewritten module into `work_dir`."""
    funcs = oversized_prim_funcs(mod)
    if not len(funcs.functions_items()):
        raise ParcnetError("the module has no oversized-op PrimFuncs: rewrite it first")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    register_metaschedule_rules(named_target.target)  # the op's blocks are annotated with its rule
    measurement = local_measurement(named_target)  # pooled builds, one measurement at a time
    return ms.tune_tir(funcs, named_target.target, str(work_dir), max_trials_global=trials,
                       num_trials_per_iter=trials_per_iter, builder=measurement.builder,
                       runner=measurement.runner, cost_model="xgb", strategy="evolutionary",
                       task_scheduler="gradient", database=open_database(work_dir, create=True))
