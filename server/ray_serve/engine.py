"""RayEngine: the edge's engine for a ray-placed model. To the registry and the servicers
it is an engine like the others; its requests go to the model's Serve replicas through
`DeploymentHandle.options(stream=True)`.

- Closing the iterator `generate` returns cancels the replica's call (`response.cancel()`).
- A replica that dies mid-stream ends the stream with UNAVAILABLE, never a short OK. One
  that dies before anything reached the caller is retried once: Serve routes the retry to
  a live replica.
- Readiness and stats are read off the request path by a poller thread: the replicas Serve
  runs (its controller's view, health checks included) and the board the replicas post
  their engine's stats to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from ray import serve
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve._private.common import ReplicaState  # the key of serve.status()'s counts
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from genserve.server.engine.contract import EngineStats
from genserve.server.errors import ResourceExhausted, Unavailable
from genserve.server.media.embedding import Embeddings
from genserve.server.ray_serve.wire import ReplicaError, ReplicaInfo, ReplicaStatus, is_final
from genserve.server.request_context import (
    current_call_details,
    current_request_id,
    seconds_left,
)

logger = logging.getLogger(__name__)

# Tries per request when a replica dies before the caller got anything.
ATTEMPTS = 2


class RayEngine:
    def __init__(
        self, name: str, app: str, handle: DeploymentHandle, board: Any, poll_s: float
    ) -> None:
        self.name = name
        self.app = app
        self.memory_bytes = 0  # the weights live in the replicas, not in this process
        self._handle = handle.options(stream=True)
        self._board = board
        self._poll_s = poll_s
        self._streams: dict[str, ReplicaInfo | None] = {}  # request id -> its replica
        self._replicas: list[ReplicaStatus] = []
        self._running = 0  # replicas Serve reports RUNNING
        self._closed = threading.Event()
        self._poll_once()
        self._poller = threading.Thread(target=self._poll, name=f"ray-{name}", daemon=True)
        self._poller.start()

    # -- the contract ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self._closed.is_set() and self._running > 0

    @property
    def replicas_running(self) -> int:
        return self._running

    def stats(self) -> EngineStats:
        replicas = self._replicas
        return EngineStats(
            queued=sum(r.queued for r in replicas),
            in_flight=sum(r.in_flight for r in replicas),
            cancelled=sum(r.cancelled for r in replicas),
        )

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._streams or any(r.queued or r.in_flight for r in self._replicas):
            if time.monotonic() > deadline:
                return False
            time.sleep(self._poll_s / 2)
        return True

    def close(self, wait_s: float = 0) -> bool:
        """Stops reading the cluster. The deployment stays: other edges may front it."""
        self._closed.set()
        return True

    async def generate(self, request: Any) -> AsyncIterator[Any]:
        if not self.ready:
            raise Unavailable(f"model {self.name}: no replica is running; retry shortly")
        request_id = current_request_id()
        self._streams[request_id] = None
        try:
            for attempt in range(1, ATTEMPTS + 1):
                sent_any = False
                try:
                    # aclosing: a caller that leaves cancels the replica now, not when the
                    # inner generator is collected
                    async with aclosing(self._stream(request, request_id)) as events:
                        async for event in events:
                            sent_any = True
                            yield event
                    return
                except RayActorError as error:
                    replica = self._streams.get(request_id)
                    where = f"replica {replica.id}" if replica else "a replica"
                    if sent_any or attempt == ATTEMPTS:
                        logger.warning("%s of %s died mid-stream: %s", where, self.name, error)
                        raise Unavailable(
                            f"model {self.name}: {where} stopped mid-stream; retry"
                        ) from None
                    logger.info("%s of %s died before answering; retrying", where, self.name)
        finally:
            self._streams.pop(request_id, None)

    async def _stream(self, request: Any, request_id: str) -> AsyncGenerator[Any]:
        # The caller's deadline goes along as a duration (clocks differ between machines).
        response = self._handle.generate.remote(request, seconds_left())
        assert isinstance(response, DeploymentResponseGenerator)  # the handle streams
        finished = False
        last: Any = None
        try:
            async for item in response:
                if isinstance(item, ReplicaInfo):  # the replica that took the request
                    self._streams[request_id] = item
                    current_call_details().replica = item.id
                    continue
                last = item
                yield item
            finished = True
        except RayTaskError as error:  # raised by the replica's code
            cause = error.cause
            if isinstance(cause, ReplicaError):
                raise cause.to_local() from None
            logger.error("replica of %s failed: %s", self.name, error)
            raise RuntimeError(f"model {self.name}: the replica failed") from None
        except BackPressureError:
            raise ResourceExhausted(
                f"model {self.name}: every replica is full; retry later"
            ) from None
        except DeploymentUnavailableError:
            raise Unavailable(f"model {self.name}: its deployment is unavailable") from None
        except RayActorError:
            raise  # generate() decides: retry, or UNAVAILABLE
        except RayError as error:  # a lost node or object: the stream is broken, not wrong
            logger.warning("the stream of %s broke on Ray: %s", self.name, error)
            raise Unavailable(f"model {self.name}: its replica's stream broke; retry") from None
        finally:
            if not finished:  # the caller left, or failed: stop the replica's work
                try:
                    response.cancel()
                except Exception:  # cancel() re-raises the routing error: keep ours
                    logger.debug("cancelling a call of %s", self.name, exc_info=True)
        # A stream must end with its final event; a unary answer (embeddings) is one event.
        if not (is_final(last) or isinstance(last, Embeddings)):
            raise Unavailable(f"model {self.name}: the replica's stream ended early; retry")

    # -- introspection (tests, operators) ------------------------------------------------------

    def replica_of(self, request_id: str) -> ReplicaInfo | None:
        """The replica serving a request now, once it has taken it."""
        return self._streams.get(request_id)

    def replicas(self) -> list[ReplicaStatus]:
        """Each live replica's engine, as it last posted."""
        return list(self._replicas)

    # -- the poller ----------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._closed.wait(self._poll_s):
            self._poll_once()

    def _poll_once(self) -> None:
        import ray

        try:
            self._running = _running_replicas(self.app)
        except Exception:  # the cluster is unreachable for now: not ready until it is back
            logger.warning("could not read the state of %s on Ray", self.app, exc_info=True)
            self._running = 0
        try:  # the board only feeds stats: losing it must not take the model down
            self._replicas = ray.get(self._board.read.remote(), timeout=10)
        except Exception:
            logger.warning("could not read the replica board of %s", self.app, exc_info=True)


def _running_replicas(app: str) -> int:
    application = serve.status().applications.get(app)
    if application is None:
        return 0
    running = ReplicaState.RUNNING
    return sum(d.replica_states.get(running, 0) for d in application.deployments.values())
