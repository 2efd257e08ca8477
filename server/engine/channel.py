"""The one hand-off from a model thread to the event loop: bounded, cancellable.

A producer thread `send`s events; the caller's coroutine iterates them. The buffer holds at
most `capacity` events: a producer that gets ahead of a slow reader waits in `send`
(backpressure), so an unread stream costs `capacity` events of memory, not the whole
output. When the reader goes away (`cancel`, or the async iteration is closed), the
producer's next `send` or `check_cancelled` raises `Cancelled`, so the model stops at
its next step. The producer ends the stream with `close(error=None)`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")

# How often a producer blocked on a full buffer looks at the cancel flag, in seconds.
_FULL_BUFFER_POLL_S = 0.1


class _Nothing:
    """No event yet (events themselves may be any value)."""


_NOTHING = _Nothing()


class Cancelled(Exception):
    """Raised in the producer thread once the reader has gone."""


class EventChannel(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._loop = asyncio.get_running_loop()  # made by the reader, on its loop
        self._buffer: deque[T] = deque()
        self._lock = threading.Condition()
        self._readable = asyncio.Event()
        self._cancelled = threading.Event()
        self._closed = False
        self._error: BaseException | None = None

    # -- producer side: any thread ---------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled

    def send(self, event: T) -> None:
        """Queue one event; waits while the buffer is full. Raises Cancelled once the
        reader has gone."""
        with self._lock:
            while len(self._buffer) >= self._capacity and not self._cancelled.is_set():
                self._lock.wait(_FULL_BUFFER_POLL_S)
            self.check_cancelled()
            self._buffer.append(event)
        self._wake_reader()

    def try_send(self, event: T) -> bool:
        """Queue one event without waiting; False when the buffer is full. For producers
        that serve many readers at once and must not stall on one of them."""
        with self._lock:
            if self._cancelled.is_set() or len(self._buffer) >= self._capacity:
                return False
            self._buffer.append(event)
        self._wake_reader()
        return True

    def close(self, error: BaseException | None = None) -> None:
        """The end of the stream; `error` is raised in the reader after the buffered events."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
        self._wake_reader()

    def _wake_reader(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._readable.set)
        except RuntimeError:  # the loop is closed: nobody will read any more
            self.cancel()

    # -- reader side: the event loop ---------------------------------------------------------

    def cancel(self) -> None:
        """The reader has gone: unblock the producer and make its next send raise."""
        self._cancelled.set()
        with self._lock:
            self._lock.notify_all()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def receive(self) -> AsyncIterator[T]:
        """The events in order; raises the producer's error at the end, if any. Closing
        this iterator early cancels the producer."""
        try:
            while True:
                event: T | _Nothing = _NOTHING
                with self._lock:
                    if self._buffer:
                        event = self._buffer.popleft()
                        self._lock.notify_all()  # room for a waiting producer
                    elif self._closed:
                        if self._error is not None:
                            raise self._error
                        return
                    else:
                        self._readable.clear()  # under the lock: a send after this sets it
                if isinstance(event, _Nothing):
                    await self._readable.wait()
                else:
                    yield event
        finally:
            self.cancel()  # a no-op for a finished producer
