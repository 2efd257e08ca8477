"""Side-by-side timing: the one way every benchmark here compares two things."""

from __future__ import annotations

import time
from collections.abc import Callable


def alternate(
    a: Callable[[], object], b: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Milliseconds per call of each, alternated so both see the same machine load (this
    machine is shared), after one warm-up call each (first calls pay for lazy setup)."""
    a(), b()
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(repeats):
        for function, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            function()
            times.append((time.perf_counter() - started) * 1000)
    return times_a, times_b
