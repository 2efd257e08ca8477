"""Runs blocking model work on one dedicated thread, one job at a time.

Callers wait in a bounded queue (RESOURCE_EXHAUSTED past it). A job reports events
through `emit`, which hands them to the caller's event loop as they happen; the caller
iterates them asynchronously. When the caller stops iterating (the RPC was cancelled),
`job.cancelled` is set so the job can stop at its next check, and a job still waiting
in the queue never starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from genserve.server.errors import ResourceExhausted


class JobCancelled(Exception):
    """Raised inside a job to abandon it once its caller has gone."""


_DONE = object()


@dataclass
class Job:
    emit: Callable[[Any], None]
    cancelled: threading.Event
    submitted: float  # perf_counter when the caller queued it
    started: float = field(default=0.0)  # perf_counter when the worker picked it up

    @property
    def queued_ms(self) -> float:
        return (self.started - self.submitted) * 1000

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled


JobFunction = Callable[[Job], None]


class SerialWorker:
    def __init__(self, name: str, max_queue: int) -> None:
        self._name = name
        self._max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending = 0  # queued or running
        self._idle = threading.Condition()
        self.cancelled_jobs = 0  # jobs abandoned part-way because their caller left

    @property
    def pending(self) -> int:
        return self._pending

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is queued or running; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    async def run(self, function: JobFunction) -> AsyncGenerator[Any, None]:
        """Queue `function` and yield what it emits until it returns. Its exception is
        raised here; JobCancelled ends the stream quietly."""
        if self._pending > self._max_queue:
            raise ResourceExhausted(
                f"{self._name} has {self._pending - 1} requests waiting "
                f"(limit {self._max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(event: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancelled.set()

        job = Job(emit=emit, cancelled=cancelled, submitted=time.perf_counter())
        with self._idle:
            self._pending += 1
        # copy_context: the job's log lines carry this request's ID
        self._executor.submit(contextvars.copy_context().run, self._execute, function, job)
        try:
            while True:
                event = await events.get()
                if event is _DONE:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            cancelled.set()  # no-op after a finished job; stops a running or queued one

    def _execute(self, function: JobFunction, job: Job) -> None:
        try:
            if job.cancelled.is_set():
                return
            job.started = time.perf_counter()
            function(job)
        except JobCancelled:
            self.cancelled_jobs += 1
        except Exception as exc:  # handed to the RPC, which logs and maps it
            job.emit(exc)
        finally:
            job.emit(_DONE)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
