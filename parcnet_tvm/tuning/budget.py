"""Tuning budget: how many trials in all, per task (by its share of the model's FLOPs) and
per round, and the budget record written beside the log."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tvm.s_tir.analysis import estimate_tir_flops

from .. import outputs
from ..errors import ParcnetError


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
    outputs.write_text(path, json.dumps({"runs": runs + [record]}, indent=1) + "\n")


def check_budget(trials=None, trials_per_task=None, trials_per_iter=None, time_budget_min=None) -> None:
    """The budget's arguments, checked before the model is imported (default_budget sizes it later)."""
    for name, value in (("trials", trials), ("trials-per-task", trials_per_task), ("trials-per-iter", trials_per_iter)):
        if value is not None and value < 1:
            raise ParcnetError(f"--{name} must be >= 1 (got {value})")
    if time_budget_min is not None and time_budget_min <= 0:
        raise ParcnetError(f"--time-budget must be > 0 minutes (got {time_budget_min})")


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
