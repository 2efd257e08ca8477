"""Stamps a media engine when it loads and hands each request's record to its encoders.

`stamped(load)` wraps a media engine's loader: once the engine is built, the model's
stamp is made (its weights digest computed here, once, not per request), and the engine
is wrapped so that each request's record is current (current.py) while the
engine queues it: the engines copy the caller's context into their jobs, so the record
reaches the model thread with the request id, and `MediaRun` picks it up there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from genserve.server.engine.contract import CLOSE_WAIT_S, Engine, EngineStats
from genserve.server.manifest import ModelSpec
from genserve.server.provenance.c2pa_sign import signer_from
from genserve.server.provenance.current import reset_record, set_record
from genserve.server.provenance.record import ModelStamp
from genserve.server.provenance.weights import weights_digest
from genserve.server.request_context import current_request_id, current_request_time
from genserve.server.settings import Settings

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSpec, Settings], Engine[Any, Any]]


def make_stamp(modality: str, engine: str, spec: ModelSpec, settings: Settings) -> ModelStamp:
    digest = signer = None
    if spec.provenance.record:
        signer = signer_from(settings.c2pa)  # None unless a C2PA chain and key are set
        started = time.perf_counter()
        digest = weights_digest(spec.resolved_source(settings.model_store), spec.gguf_file)
        logger.info(
            "%s: weights digest %s (%.0f ms)",
            spec.name,
            digest,
            (time.perf_counter() - started) * 1000,
        )
    return ModelStamp(modality, spec.name, engine, digest, spec.provenance, signer)


class StampedEngine:
    """An engine whose requests carry their generation record; otherwise the same engine."""

    def __init__(self, inner: Engine[Any, Any], stamp: ModelStamp) -> None:
        self._inner = inner
        self.stamp = stamp
        self.name = inner.name
        self.memory_bytes = inner.memory_bytes

    async def generate(self, request: Any) -> AsyncGenerator[Any, None]:
        created = current_request_time() or time.time()
        record = self.stamp.record_for(request, current_request_id(), created)
        # Every engine's generate is an async generator (the contract says iterator).
        events = cast(AsyncGenerator[Any, None], self._inner.generate(request))
        token = set_record(record)
        try:  # the first step queues the request, copying this context into its job
            first = await anext(events)
        except StopAsyncIteration:
            return
        finally:
            reset_record(token)
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    @property
    def ready(self) -> bool:
        return self._inner.ready

    def stats(self) -> EngineStats:
        return self._inner.stats()

    def wait_idle(self, timeout: float) -> bool:
        return self._inner.wait_idle(timeout)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        return self._inner.close(wait_s)

    def __getattr__(self, name: str) -> Any:  # what a particular engine offers besides
        return getattr(self._inner, name)


def stamped(modality: str, engine: str, load: Loader) -> Loader:
    def load_stamped(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
        inner = load(spec, settings)
        return StampedEngine(inner, make_stamp(modality, engine, spec, settings))

    return load_stamped
