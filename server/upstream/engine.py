"""An engine whose model runs on another server: the engine contract over an HTTP hop.

The work of each modality and upstream kind is an adapter, `(http, request) -> events`
(openai.py, bentoml.py); this class adds what every engine owes the registry: counts,
readiness (the upstream's reachability, probed periodically), draining and closing.
Closing the iterator `generate` returns closes the upstream connection (the adapter's
`async with http.stream(...)` exits), which is how the upstream learns the caller left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Generic, TypeVar

from genserve.server.engine.contract import EngineStats
from genserve.server.errors import ServingError, Unavailable
from genserve.server.upstream.http import UpstreamHttp

logger = logging.getLogger(__name__)

R = TypeVar("R")
E = TypeVar("E")

Adapter = Callable[[UpstreamHttp, R], AsyncGenerator[E, None]]


class UpstreamEngine(Generic[R, E]):
    memory_bytes = 0  # the weights live upstream

    def __init__(
        self, name: str, http: UpstreamHttp, adapter: Adapter[R, E], health_path: str
    ) -> None:
        self.name = name
        self.http = http
        self._adapter = adapter
        self.health_path = health_path
        self._reachable = False
        self._first_probe = True
        self._probed_at = float("-inf")
        self._closed = False
        self._cancelled = 0
        self._idle = threading.Condition()

    @property
    def ready(self) -> bool:
        return self._reachable and not self._closed

    def stats(self) -> EngineStats:
        return EngineStats(queued=0, in_flight=self.http.in_flight, cancelled=self._cancelled)

    async def generate(self, request: R) -> AsyncIterator[E]:
        if self._closed:
            raise Unavailable(f"model {self.name} is closed")
        # aclosing: the adapter (and its upstream connection) closes the moment this
        # generator does, not whenever the garbage collector finalizes it.
        try:
            async with aclosing(self._adapter(self.http, request)) as events:
                async for event in events:
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            self._cancelled += 1
            raise
        except ServingError:
            raise
        except Exception as error:
            # The adapters check what they read; this is the net under them. Whatever the
            # upstream sent, the caller gets UNAVAILABLE, never INTERNAL, and the log gets
            # one line, not a traceback.
            kind = type(error).__name__
            logger.warning(
                "model %s: the upstream's reply broke an adapter: %s: %s", self.name, kind, error
            )
            raise Unavailable(
                f"model {self.name}: the upstream sent a reply genserve could not read ({kind})"
            ) from None
        finally:
            with self._idle:
                self._idle.notify_all()

    async def probe(self) -> bool:
        """Refreshes readiness at most every `health_interval_s`; True when it changed."""
        now = time.monotonic()
        if self._closed or now - self._probed_at < self.http.spec.health_interval_s:
            return False
        self._probed_at = now
        return self.mark_reachable(await self.http.problem(self.health_path))

    def mark_reachable(self, problem: str | None) -> bool:
        """Takes a probe's answer (None: all well); True when readiness changed."""
        self._probed_at = time.monotonic()
        reachable = problem is None
        changed = reachable != self._reachable
        self._reachable = reachable
        if changed or (problem is not None and self._first_probe):
            if reachable:
                logger.info("model %s: its upstream answers again", self.name)
            else:
                logger.warning("model %s: its upstream %s", self.name, problem)
        self._first_probe = False
        return changed

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self.http.in_flight == 0, timeout)

    def close(self, wait_s: float = 10.0) -> bool:
        """Refuses new requests and closes the pool. Nothing runs here to wait for: calls
        still open end with the server's own cancellation of them."""
        self._closed = True
        self.http.close()
        return True
