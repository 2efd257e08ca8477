"""An engine that runs one request at a time on a dedicated model thread.

For models that are not re-entrant (diffusers schedulers keep per-call state) or gain
nothing from batching here. Callers wait in a bounded queue (RESOURCE_EXHAUSTED past
it); a job writes its events into an EventChannel, so an unread stream makes the job
wait rather than buffer, and a caller that leaves stops the job at its next check. A
job still queued when its caller leaves never starts. The thread is a daemon: it never
holds the process open at exit.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from genserve.server.engine.base import EngineBase
from genserve.server.engine.channel import Cancelled, EventChannel
from genserve.server.errors import ResourceExhausted

logger = logging.getLogger(__name__)

R = TypeVar("R")
E = TypeVar("E")

# Events a job may get ahead of its reader: a few media chunks, or a few text deltas.
DEFAULT_BUFFER_EVENTS = 8


@dataclass
class Job(Generic[E]):
    """One request on the model thread: where its events go and when it was queued."""

    channel: EventChannel[E]
    submitted: float  # perf_counter when the caller queued it
    started: float = field(default=0.0)  # perf_counter when the thread picked it up
    on_step: Callable[[], None] = field(default=lambda: None)  # counts the engine's steps

    @property
    def queued_ms(self) -> float:
        return (self.started - self.submitted) * 1000

    def emit(self, event: E) -> None:
        self.channel.send(event)

    @property
    def cancelled(self) -> bool:
        return self.channel.cancelled

    def check_cancelled(self) -> None:
        self.channel.check_cancelled()

    def step_done(self) -> None:
        self.on_step()


Work = Callable[[R, Job[E]], None]


@dataclass
class _Queued(Generic[R, E]):
    request: R
    job: Job[E]
    context: contextvars.Context  # the caller's: the job's log lines carry its request ID

    @property
    def channel(self) -> EventChannel[E]:
        return self.job.channel


class SerialEngine(EngineBase[_Queued[R, E]], Generic[R, E]):
    def __init__(
        self,
        name: str,
        work: Work[R, E],
        *,
        max_queue: int,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
        memory_bytes: int = 0,
    ) -> None:
        super().__init__(name, thread_name=f"engine-{name}", memory_bytes=memory_bytes)
        self._work = work
        self._max_queue = max_queue
        self._buffer_events = buffer_events
        self._current: Job[E] | None = None
        self._start_thread()

    async def generate(self, request: R) -> AsyncGenerator[E, None]:
        """Queue the request and yield what its job emits; the job's exception is raised
        here. Closing the iterator early cancels the job."""
        channel: EventChannel[E] = EventChannel(self._buffer_events)
        job: Job[E] = Job(channel=channel, submitted=time.perf_counter(), on_step=self._stepped)
        self._submit(_Queued(request, job, contextvars.copy_context()), max_queued=self._max_queue)
        try:
            async for event in channel.receive():
                yield event
        finally:
            # Closed at a yield, receive() would be left suspended until the loop collects
            # it: cancel now, so the job stops at its next send rather than loop turns later.
            channel.cancel()

    def _run_once(self) -> None:
        queued = self._inbox.get()
        if queued is None:
            return
        if self._closed:  # close() came while it waited: it ends as the queue does
            self._refuse(queued)
            return
        queued.context.run(self._execute, queued)

    def _execute(self, queued: _Queued[R, E]) -> None:
        job = queued.job
        self._dequeued()
        if job.cancelled:  # its caller left while it waited
            self._finished(queued)
            return
        error: BaseException | None = None
        job.started = time.perf_counter()
        self._current = job
        try:
            self._work(queued.request, job)
        except Cancelled:
            pass
        except Exception as exc:  # handed to the caller, whose servicer logs and maps it
            error = exc
        finally:
            self._current = None
            self._finished(queued, error)

    def _interrupt(self) -> None:
        current = self._current
        if current is not None:
            current.channel.cancel()

    def _closing_error(self) -> ResourceExhausted:
        return ResourceExhausted(f"{self.name} was unloaded; retry later")
