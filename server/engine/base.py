"""The lifecycle every in-process engine shares: one model thread, an inbox, the counts.

The engines differ only in what their thread does with the work it takes (run one job to
its end; one batched decoding step; one denoising step). What the registry and callers
see of them is the same, and lives here once: requests refused when the engine is closed
or its queue is full, the queued / in-flight / cancelled / step counts, wait_idle, and a
close that stops the running work at its next step, ends what still waits and joins the
thread. A new engine subclasses EngineBase, starts the thread at the end of its
`__init__` and writes `_run_once` (plus `_interrupt` / `_shutdown` if it holds work of its
own); it never touches the counts but through the four calls below.

One request's accounting, under one lock: `_submit` makes it pending and queued;
`_dequeued` when the thread starts it (or drops it unstarted); `_finished` once its
stream is closed. `_stepped` counts a model step (a decoding pass, a denoising step):
tests read it to check that a cancel stops compute within a step.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any, Generic, Protocol, TypeVar

from genserve.server.engine.channel import EventChannel
from genserve.server.engine.contract import CLOSE_WAIT_S, EngineStats
from genserve.server.errors import ResourceExhausted, ServingError, Unavailable

logger = logging.getLogger(__name__)


class Work(Protocol):
    """What an engine queues: anything that carries the request's event channel."""

    @property
    def channel(self) -> EventChannel[Any]: ...


W = TypeVar("W", bound=Work)


class EngineBase(ABC, Generic[W]):
    def __init__(self, name: str, *, thread_name: str, memory_bytes: int = 0) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        # None is close()'s wake-up: it is put last, under the lock, after every request
        self._inbox: queue.Queue[W | None] = queue.Queue()
        self._idle = threading.Condition()  # guards the counts below and _closed
        self._pending = 0  # accepted and not finished
        self._queued = 0  # accepted and not started
        self._cancelled = 0
        self._steps = 0  # written by the model thread only
        self._tokens_generated = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=thread_name, daemon=True)

    def _start_thread(self) -> None:
        """The last line of a subclass's __init__: the thread reads the state it sets."""
        self._thread.start()

    # -- the engine contract ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def stats(self) -> EngineStats:
        with self._idle:
            return EngineStats(
                queued=self._queued,
                in_flight=self._pending - self._queued,
                cancelled=self._cancelled,
                tokens_generated=self._tokens_generated,
                steps=self._steps,
            )

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Stops the running work at its next step, ends what still waits, and waits up to
        `wait_s` for the thread (a model thread still inside torch or llama.cpp when the
        interpreter exits can abort the process). True once the thread has ended."""
        with self._idle:
            if not self._closed:
                self._closed = True
                self._inbox.put(None)
                self._interrupt()
        started = self._thread.ident is not None
        if started and threading.current_thread() is not self._thread:
            self._thread.join(wait_s)
        return not self._thread.is_alive()

    # -- for subclasses: the accounting ---------------------------------------------------

    def _submit(self, work: W, *, max_queued: int) -> None:
        """Accepts the request and hands it to the thread; refused when the engine is
        closed or `max_queued` requests wait already."""
        with self._idle:
            if self._closed:
                raise self._closing_error()
            if self._queued >= max_queued:
                raise ResourceExhausted(
                    f"{self.name} has {self._queued} requests waiting "
                    f"(limit {max_queued}); retry later"
                )
            self._pending += 1
            self._queued += 1
            self._inbox.put(work)  # under the lock: never behind close()'s wake-up

    def _dequeued(self) -> None:
        """The request left the queue: started, or about to end unstarted."""
        with self._idle:
            self._queued -= 1

    def _finished(self, work: W, error: BaseException | None = None, *, tokens: int = 0) -> None:
        """Ends the request's stream (with `error` raised to its reader, if any)."""
        cancelled = work.channel.cancelled  # before close: its reader cancels once it ends
        work.channel.close(error)
        with self._idle:
            self._pending -= 1
            self._cancelled += cancelled
            self._tokens_generated += tokens
            self._idle.notify_all()

    def _refuse(self, work: W) -> None:
        """Ends a request that never started, as closing ends the queue."""
        self._dequeued()
        self._finished(work, self._closing_error())

    def _stepped(self) -> None:
        self._steps += 1

    # -- for subclasses: what differs ---------------------------------------------------------

    @abstractmethod
    def _run_once(self) -> None:
        """One turn of the thread: wait for work when there is none (`self._inbox.get()`
        returns None once closing), then run one step of it. Errors of one step must end
        that step's requests here: one that escapes stops the engine."""

    def _interrupt(self) -> None:
        """close(), under the lock: make the running work stop at its next step."""

    def _shutdown(self) -> None:
        """On the thread, once closing: end the work it holds and free the model."""

    def _closing_error(self) -> ServingError:
        return Unavailable(f"{self.name} is shutting down; retry later")

    # -- the thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closed:
                self._run_once()
        except Exception:
            logger.exception("engine %s stopped on an unexpected error", self.name)
        finally:
            with self._idle:  # whatever ended the loop, nothing new is accepted after this
                self._closed = True
            try:
                self._shutdown()
            finally:
                self._drain_inbox()

    def _drain_inbox(self) -> None:
        while True:
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                return
            if work is not None:
                self._refuse(work)
