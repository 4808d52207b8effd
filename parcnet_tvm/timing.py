"""Latency measurement shared by build, tune and bench: warm-up, then median and p90."""

from __future__ import annotations

import time

import numpy as np


def measure_ms(run, repeat: int = 10, warmup: int = 2, sync=None, number: int = 1, first_samples=()) -> dict:
    """Call `run()` `warmup` times, then take `repeat` samples of `number` calls each (the
    mean per call); `sync()` ends each sample (GPU calls return before the work is done).
    `first_samples` (ms) are samples the caller already took the same way."""
    for _ in range(warmup):
        run()
    if sync:
        sync()
    samples = list(first_samples)
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3 / number)
    return summarize_ms(samples)


def summarize_ms(samples) -> dict:
    return {
        "median_ms": float(np.median(samples)),
        "p90_ms": float(np.percentile(samples, 90)),
        "repeat": len(samples),
        "samples_ms": [round(float(s), 4) for s in samples],
    }
