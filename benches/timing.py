"""Timing helper shared by the benchmark scripts (the machine is noisy: take medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds in which every function runs once, in turn (the order
    rotating each round), so that slow spells of a shared machine hit all of them alike."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow/fast (round by round, as from :func:`interleaved_times`)."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))
