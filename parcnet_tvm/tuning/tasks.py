"""Tuning tasks and the tuning loop: MetaSchedule's tasks of the fused module, each task's
design space (our hand rule where one applies), and tuning them into the log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
from tvm.s_tir.meta_schedule.utils import fork_seed

from ..errors import ParcnetError
from ..log_lock import writing
from ..rewrite import PRIMFUNC_PREFIX
from ..schedules import hand_rule_for, hand_rule_space, register_metaschedule_rules
from ..schedules.common import frames_without_source
from ..targets import NamedTarget, host_cores
from ..tuning_log import copy_records, open_database, record_counts
from .budget import TuneBudget, task_flops, task_trial_caps, write_budget_record
from .device import claim_work_dir, other_device_problem
from .measurement import Measurement, local_measurement, trials_by_board
from .progress import TuningProgress
from .scheduler import GradientScheduler


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
    trials_failed: int = 0      # of trials_new: failed to build or run (they do not count as tuned)
    failure: str = ""           # the first failure's error
    from_warm_start: int = 0
    records_copied: int = 0
    seconds: float = 0.0
    stopped: str = "finished"  # finished | time budget | nothing to do
    best_ms: dict = field(default_factory=dict)
    trials_by_board: dict = field(default_factory=dict)  # board HOST:PORT -> trials it measured


DESIGN_SPACES = ("ours", "generic")


def task_contexts(tasks, named: NamedTarget, work_dir, design_space: str = "ours", seed: int | None = None):
    """One TuneContext per task, and the tasks' weights. Design space `ours`: a task that one of
    our hand rules schedules is searched within that schedule, its tile sizes the knobs (a small
    space that starts where the untuned build is); the other tasks, and every task under
    `generic`, get MetaSchedule's generic rules for the target."""
    if design_space not in DESIGN_SPACES:
        raise ParcnetError(f"unknown design space {design_space!r}: choose one of {', '.join(DESIGN_SPACES)}")
    register_metaschedule_rules(named.target)  # our op's annotated blocks, in the generic space
    with frames_without_source():  # the first TuneContext imports TVM's tensor intrinsics
        import tvm.s_tir.tensor_intrin  # noqa: F401
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
    database in `work_dir` (created or resumed), each within `design_space` (see task_contexts).
    `work_dir` and the `warm_start` logs are used only if the measurement's device measured them.
    The work dir is locked for the run (`tuning_log.writing`): one writer at a time."""
    work_dir = Path(work_dir)
    if measurement.device is None:
        raise ParcnetError(f"nothing here measures {named.name} trials: give a board (--rpc-tracker/--rpc/--emulate)")
    with writing(work_dir):
        claim_work_dir(work_dir, measurement.device)
        database = open_database(work_dir, create=True, log=log)
        tasks = extract_tasks(fused, named, only) if tasks is None else tasks
        summary = TuneSummary(work_dir=str(work_dir), tasks=len(tasks))
        warm = _warm_start(database, tasks, same_device_logs(warm_start, measurement.device, log), summary, log)
        plan = _plan(database, tasks, warm, budget, work_dir, summary, log)
        if plan is not None:
            _search(database, tasks, plan, named, work_dir, budget, measurement, design_space, seed, summary, log)
    return summary


def _warm_start(database, tasks, sources, summary: TuneSummary, log) -> set:
    """Copy the records of tasks another log (of this device) already tuned; returns their indices."""
    warm = set()
    for source_dir in sources:
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
        log(f"      warm start: {len(warm)} of {len(tasks)} tasks already tuned in {', '.join(map(str, sources))} "
            f"({summary.records_copied} records copied)")
    return warm


def _plan(database, tasks, warm: set, budget: TuneBudget, work_dir: Path, summary: TuneSummary, log):
    """(tasks to tune, trials left for each, trials left in all), or None when nothing is left."""
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
        return None
    return todo, [caps[i] - recorded[i] for i in todo], remaining


def _search(database, tasks, plan, named: NamedTarget, work_dir: Path, budget: TuneBudget,
            measurement: Measurement, design_space: str, seed, summary: TuneSummary, log) -> None:
    """MetaSchedule's search over the planned tasks, into `database`; fills in `summary`."""
    todo, trials_left, remaining = plan
    selected = [tasks[i] for i in todo]
    contexts, weights = task_contexts(selected, named, work_dir, design_space, seed)
    by_board = (lambda: trials_by_board(measurement.ledger)) if measurement.ledger else None
    progress = TuningProgress(weights, TuneBudget(remaining, max(trials_left), budget.trials_per_iter,
                                                  budget.time_budget_min), measurement.emulated, log, by_board)
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
    summary.trials_failed = progress.build_errors + progress.run_errors
    summary.failure = progress.failure
    summary.seconds = progress.elapsed()
    summary.best_ms = {selected[i].task_name: ms_ for i, ms_ in progress.best_ms.items()}
    summary.trials_by_board = by_board() if by_board else {}


def same_device_logs(logs, device, log) -> list:
    """The logs `device` measured; the others are said and left out (never counted as done)."""
    usable = []
    for log_dir in logs:
        problem = other_device_problem(log_dir, device)
        if problem:
            log(f"      warm start: {problem}: not used (another device's records are not this one's trials)")
        else:
            usable.append(log_dir)
    return usable


def _quiet_metaschedule_console() -> None:
    """MetaSchedule logs every trial to the console; its per-task logs stay in work_dir/logs."""
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


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
    register_metaschedule_rules(named_target.target)  # the op's blocks are annotated with its rule
    measurement = local_measurement(named_target)  # pooled builds, one measurement at a time
    with writing(work_dir):
        claim_work_dir(work_dir, measurement.device)  # creates it; refuses another device's
        return ms.tune_tir(funcs, named_target.target, str(work_dir), max_trials_global=trials,
                           num_trials_per_iter=trials_per_iter, builder=measurement.builder,
                           runner=measurement.runner, cost_model="xgb", strategy="evolutionary",
                           task_scheduler="gradient", database=open_database(work_dir, create=True))
