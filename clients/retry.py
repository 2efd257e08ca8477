"""When to try a call again, and how long to wait first: decided here, slept by the
transports (time.sleep or asyncio.sleep), so both follow one rule.

The rule: UNAVAILABLE (the server restarting or not up yet) with backoff, and
RESOURCE_EXHAUSTED (a full queue, a key over budget) after the server's retry-after when
that wait is short enough; both only while nothing has arrived, so a retried call never
repeats part of an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from genserve.contract.metadata import RETRY_AFTER, RETRY_AFTER_MS

from . import defaults


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = defaults.MAX_RETRIES
    max_retry_after_s: float = defaults.MAX_RETRY_AFTER_S

    def delay_s(
        self,
        code: grpc.StatusCode,
        trailing: Mapping[str, Any],
        received_anything: bool,
        attempt: int,
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now."""
        if received_anything or attempt >= self.max_retries:
            return None
        if code == grpc.StatusCode.UNAVAILABLE:
            return backoff_s(attempt)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            wait = retry_after_s(trailing)
            if wait is not None and wait <= self.max_retry_after_s:
                return wait
        return None

    def attempts(self) -> Attempts:
        return Attempts(self)


class Attempts:
    """One call's retry state: feed it each failure, get the wait or None."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._attempt = 0

    def next_delay_s(self, error: Any, received_anything: bool) -> float | None:
        delay = self._policy.delay_s(
            error.code(), trailing_metadata(error), received_anything, self._attempt
        )
        self._attempt += 1
        return delay


def trailing_metadata(error: Any) -> dict[str, Any]:
    """A failed call's trailing metadata as a dict; empty when it has none."""
    trailing = getattr(error, "trailing_metadata", None)
    return dict(trailing() or ()) if callable(trailing) else {}


def retry_after_s(trailing: Mapping[str, Any]) -> float | None:
    """The wait the server named: `retry-after-ms` (exact), else `retry-after` (seconds)."""
    for key, scale in ((RETRY_AFTER_MS, 0.001), (RETRY_AFTER, 1.0)):
        value = trailing.get(key)
        if isinstance(value, str) and value.isdigit():
            return int(value) * scale
    return None


def backoff_s(attempt: int) -> float:
    return float(min(defaults.RETRY_BACKOFF_S * 2**attempt, defaults.RETRY_BACKOFF_MAX_S))
