"""The Ray Serve deployment: one replica holds one in-process engine, built by the same
loader the edge would use, and streams its plain events back to the edge.

Its methods are async and await between events, so `response.cancel()` at the edge
reaches them: the cancel lands at the next await, closing the engine's stream, which is
the engine's own cancellation (it stops at its next step).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import ray
from ray import serve

from genserve.server.engine.contract import Engine
from genserve.server.errors import ServingError
from genserve.server.manifest import Modality, ModelSpec
from genserve.server.ray_serve.board import board_for
from genserve.server.ray_serve.placement import app_name
from genserve.server.ray_serve.wire import ReplicaError, ReplicaInfo, ReplicaStatus, is_final
from genserve.server.settings import Settings

logger = logging.getLogger(__name__)

# How long a stopping replica waits for its model thread to finish a step.
REPLICA_CLOSE_WAIT_S = 5.0


@serve.deployment
class EngineReplica:
    def __init__(self, modality: Modality, spec: ModelSpec, settings: Settings) -> None:
        from genserve.server.modalities import loader_for

        loader = loader_for(modality, spec)
        if loader is None:
            raise ValueError(f"no {spec.engine or 'default'} engine for {modality}")
        self._engine: Engine[Any, Any] = loader(spec, settings)
        replica = serve.get_replica_context().replica_id
        self.info = ReplicaInfo(
            id=replica.unique_id,
            actor=replica.to_full_id_str(),
            node=ray.get_runtime_context().get_node_id(),
            pid=os.getpid(),
        )
        self._events = 0
        self._board = board_for(app_name(spec.name, spec.ray), settings.ray.namespace)
        self._stop = threading.Event()
        self._poll_s = settings.ray.poll_s
        self._timeout_s = settings.ray.request_timeout_s
        threading.Thread(target=self._post_status, name="board-post", daemon=True).start()
        logger.info("replica %s of %s ready (pid %d)", self.info.id, spec.name, self.info.pid)

    async def generate(self, request: Any, seconds_left: float | None = None) -> AsyncIterator[Any]:
        """Who serves the request first, then the engine's events; the final one names
        this replica in its timings. A watchdog ends the request at the caller's deadline
        or after `--ray.request-timeout-s`, whichever comes first: a cancel that Serve fails
        to deliver (ray#52533) must not hold the engine."""
        yield self.info
        limit = min(self._timeout_s, seconds_left) if seconds_left else self._timeout_s
        try:
            async with asyncio.timeout(limit):
                async for event in self._engine.generate(request):
                    self._events += 1
                    if is_final(event):
                        event = replace(event, replica=self.info.id)
                    yield event
        except ServingError as error:  # refused by the engine: the caller's code and message
            raise ReplicaError.of(error) from None
        except TimeoutError:
            logger.warning("replica %s: a request ran past its %.1f s", self.info.id, limit)
            raise ReplicaError("DEADLINE_EXCEEDED", f"ran past {limit:.1f} s", None) from None

    def status(self) -> ReplicaStatus:
        stats = self._engine.stats()
        return ReplicaStatus(
            info=self.info,
            ready=self._engine.ready,
            queued=stats.queued,
            in_flight=stats.in_flight,
            cancelled=stats.cancelled,
            events=self._events,
            reported_at=time.time(),
        )

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose engine has stopped is replaced."""
        if not self._engine.ready:
            raise RuntimeError(f"replica {self.info.id}: its engine has stopped")

    def _post_status(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self._board.post.remote(self.status())
            except Exception:  # the board may be restarting: post again next time
                logger.warning("replica %s could not post its status", self.info.id)

    def __del__(self) -> None:  # Serve's graceful shutdown of the replica
        self._stop.set()
        self._engine.close(REPLICA_CLOSE_WAIT_S)
