"""The task scheduler: gradient-based, within each task's trial allowance."""

from __future__ import annotations

import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from .progress import mean_run_seconds


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
