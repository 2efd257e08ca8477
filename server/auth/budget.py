"""Per-key budgets per minute, in each modality's cost units (a token bucket per key and
modality: full at the start, refilled continuously at budget/60 per second).

A request is charged its cost before it runs; one the bucket cannot cover yet is refused
with the time until it can (RESOURCE_EXHAUSTED + retry-after). A request larger than the
whole budget could never run, so it is refused as invalid instead of told to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from genserve.server.errors import InvalidArgument, ResourceExhausted

SECONDS_PER_MINUTE = 60.0


@dataclass
class _Bucket:
    units: float
    at: float


class BudgetBook:
    """Read and written on the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def charge(self, key_id: str, modality: str, units: float, per_minute: float) -> None:
        if units > per_minute:
            raise InvalidArgument(
                "cost",
                f"{units:.0f} {modality} units exceed key {key_id}'s budget of "
                f"{per_minute:.0f} per minute",
            )
        now = self._clock()
        rate = per_minute / SECONDS_PER_MINUTE
        bucket = self._buckets.get((key_id, modality))
        if bucket is None:
            bucket = self._buckets[(key_id, modality)] = _Bucket(per_minute, now)
        bucket.units = min(per_minute, bucket.units + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.units < units:
            wait = (units - bucket.units) / rate
            raise ResourceExhausted(
                f"key {key_id} is over its {modality} budget of {per_minute:.0f} units per "
                f"minute: retry in {wait:.1f} s",
                retry_after_s=wait,
            )
        bucket.units -= units

    def refund(self, key_id: str, modality: str, units: float, per_minute: float) -> None:
        """Gives back a charge whose work never started (a job refused before it ran)."""
        bucket = self._buckets.get((key_id, modality))
        if bucket is not None:
            bucket.units = min(per_minute, bucket.units + units)
