"""Progress of a tuning run: one line per measured batch, and the best time per task."""

from __future__ import annotations

import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from .budget import TuneBudget


def mean_run_seconds(result) -> float:
    """A measured candidate's mean time (RunnerResult.run_secs holds FloatImm or float)."""
    secs = [float(getattr(s, "value", s)) for s in result.run_secs]
    return sum(secs) / len(secs)


def last_line(error: str) -> str:
    """The exception of an error message, not its traceback."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return (lines[-1] if lines else error)[:300]


def boards_line(counts: dict[str, int]) -> str:
    """`measured on 2 boards: 127.0.0.1:9091 9 trials, 127.0.0.1:9092 7 trials`"""
    boards = f"{len(counts)} boards" if len(counts) != 1 else "1 board"
    return f"measured on {boards}: " + ", ".join(f"{where} {n} trials" for where, n in counts.items())


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


@derived_object
class TuningProgress(PyMeasureCallback):
    """One progress line per measured batch."""

    def __init__(self, weights, budget: TuneBudget, emulated: bool, log, trials_by_board=None):
        super().__init__()
        self.trials_by_board = trials_by_board  # () -> {board: measured trials}, for a pool of boards
        self.weights = list(weights)
        self.budget = budget
        self.emulated = emulated
        self.log = log
        self.start = time.perf_counter()
        self.trials = 0
        self.build_errors = 0
        self.run_errors = 0
        self.failure = ""  # the first failed trial's error, for the summary
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
                self.failure = self.failure or "build: " + last_line(str(built.error_msg))
            elif ran.error_msg:
                self.run_errors += 1
                failed.append(str(ran.error_msg))
                self.failure = self.failure or "run: " + last_line(str(ran.error_msg))
            else:
                ms_ = 1e3 * mean_run_seconds(ran)
                self.best_ms[task_id] = min(self.best_ms.get(task_id, ms_), ms_)
        if failed and len(failed) == len(runner_results):
            self.log(f"warning: all {len(failed)} trials of this batch failed to run ({last_line(failed[0])}); "
                     "if the board went away, stop with Ctrl-C and rerun the same command once it is back: "
                     "failed trials do not count, their tasks are tuned again")
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
        boards = self.trials_by_board() if self.trials_by_board else {}
        where = f" | {boards_line(boards)}" if boards else ""
        return (f"[tune] tasks measured {len(self.best_ms)}/{n_tasks} | trials {self.trials}/{self.budget.trials}{errors} | "
                f"{estimate} | elapsed {_fmt_duration(elapsed)}, ETA {_fmt_duration(eta)}{where}")
