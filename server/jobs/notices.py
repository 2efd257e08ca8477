"""Wakes the watchers of a job when its row or its bytes change.

In this process only: watchers also re-read the store every poll period, which is what
carries changes made by another server sharing the store.
"""

from __future__ import annotations

import asyncio
import contextlib


class JobNotices:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def listen(self, job_id: str) -> asyncio.Event:
        """Take this before reading the store, so a change in between is not missed."""
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        return event

    def notify(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()


async def wait_for_change(event: asyncio.Event, poll_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), poll_s)
