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
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from genserve.server.engine.channel import Cancelled, EventChannel
from genserve.server.engine.contract import CLOSE_WAIT_S, EngineStats
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


class SerialEngine(Generic[R, E]):
    def __init__(
        self,
        name: str,
        work: Work[R, E],
        *,
        max_queue: int,
        buffer_events: int = DEFAULT_BUFFER_EVENTS,
        memory_bytes: int = 0,
    ) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        self._work = work
        self._max_queue = max_queue
        self._buffer_events = buffer_events
        self._jobs: queue.Queue[tuple[R, Job[E], contextvars.Context] | None] = queue.Queue()
        self._pending = 0  # queued or running
        self._running = 0
        self._cancelled = 0
        self._steps = 0
        self._idle = threading.Condition()
        self._closed = False
        self._current: Job[E] | None = None
        self._thread = threading.Thread(target=self._serve, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return EngineStats(
            queued=self._pending - self._running,
            in_flight=self._running,
            cancelled=self._cancelled,
            steps=self._steps,
        )

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    async def generate(self, request: R) -> AsyncGenerator[E, None]:
        """Queue the request and yield what its job emits; the job's exception is raised
        here. Closing the iterator early cancels the job."""
        waiting = self._pending - self._running
        if waiting >= self._max_queue:
            raise ResourceExhausted(
                f"{self.name} has {waiting} requests waiting (limit {self._max_queue}); retry later"
            )
        channel: EventChannel[E] = EventChannel(self._buffer_events)
        job: Job[E] = Job(channel=channel, submitted=time.perf_counter(), on_step=self._step)
        with self._idle:
            self._pending += 1
        # copy_context: the job's log lines carry this request's ID
        self._jobs.put((request, job, contextvars.copy_context()))
        try:
            async for event in channel.receive():
                yield event
        finally:
            # Closed at a yield, receive() would be left suspended until the loop collects
            # it: cancel now, so the job stops at its next send rather than loop turns later.
            channel.cancel()

    def _step(self) -> None:
        self._steps += 1  # the model thread alone writes it

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Stops the running job at its next step, ends the queued ones, and waits up to
        `wait_s` for the thread (a model thread still inside torch when the interpreter
        exits can abort the process). True once the thread has ended."""
        if not self._closed:
            self._closed = True
            current = self._current
            if current is not None:
                current.channel.cancel()
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(wait_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._drain_queue()
                return
            request, job, context = item
            context.run(self._execute, request, job)

    def _execute(self, request: R, job: Job[E]) -> None:
        error: BaseException | None = None
        try:
            if job.cancelled:  # its caller left while it waited
                return
            job.started = time.perf_counter()
            self._running = 1
            self._current = job
            self._work(request, job)
        except Cancelled:
            self._cancelled += 1
        except Exception as exc:  # handed to the caller, whose servicer logs and maps it
            error = exc
        finally:
            self._running = 0
            self._current = None
            job.channel.close(error)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _drain_queue(self) -> None:
        """Closing: jobs still queued end at once (their callers see the stream end)."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _, job, _ = item
                job.channel.close(ResourceExhausted(f"{self.name} was unloaded; retry later"))
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
