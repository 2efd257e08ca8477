"""The model registry: loads each modality's model per its manifest entry and load policy.

`preload` models load before the server reports SERVING; `on_demand` models load for
each request and are dropped after it (the seed's load-per-request strategy: slow, but
holds no memory between requests). A model that fails to load is recorded as failed
with its reason; the other modalities still serve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from genserve.server.errors import Unavailable
from genserve.server.manifest import LoadPolicy, Manifest, Modality, ModelSpec

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], Any]
"""Builds a model (engine or pipeline) from its spec. Runs on a worker thread."""


class ModelState(StrEnum):
    NOT_CONFIGURED = "not_configured"  # the manifest has no entry, or no loader exists yet
    PENDING = "pending"  # preload not finished yet
    LOADED = "loaded"
    ON_DEMAND = "on_demand"  # loads per request
    FAILED = "failed"


READY_STATES = frozenset({ModelState.LOADED, ModelState.ON_DEMAND})


@dataclass
class ModelSlot:
    modality: Modality
    spec: ModelSpec | None
    loader: Loader | None
    state: ModelState = ModelState.NOT_CONFIGURED
    detail: str = ""
    instance: Any = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


class ModelRegistry:
    def __init__(self, manifest: Manifest, loaders: Mapping[Modality, Loader]) -> None:
        self._slots: dict[Modality, ModelSlot] = {}
        for modality in Modality:
            spec = manifest.spec_for(modality)
            loader = loaders.get(modality)
            slot = ModelSlot(modality, spec, loader)
            if spec is None:
                slot.detail = "no model in the manifest"
            elif loader is None:
                slot.detail = f"{modality} serving is not implemented in this version"
            elif spec.load_policy is LoadPolicy.ON_DEMAND:
                slot.state = ModelState.ON_DEMAND
            else:
                slot.state = ModelState.PENDING
            self._slots[modality] = slot
        self._on_demand_lock = asyncio.Lock()

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def slot(self, modality: Modality) -> ModelSlot:
        return self._slots[modality]

    async def preload(self, on_loaded: Callable[[ModelSlot], None] | None = None) -> None:
        """Load every `preload` model, one after the other, off the event loop."""
        for slot in self._slots.values():
            if slot.state is ModelState.PENDING:
                await self._load(slot)
                if on_loaded is not None:
                    on_loaded(slot)

    async def _load(self, slot: ModelSlot) -> None:
        assert slot.spec is not None and slot.loader is not None
        started = time.perf_counter()
        try:
            slot.instance = await asyncio.to_thread(slot.loader, slot.spec)
        except Exception as exc:  # one model's failure must not stop the rest
            slot.state = ModelState.FAILED
            slot.detail = f"{type(exc).__name__}: {exc}"
            logger.exception("failed to load %s model %s", slot.modality, slot.spec.name)
            return
        slot.state = ModelState.LOADED
        slot.detail = ""
        logger.info(
            "loaded %s model %s in %.1f s",
            slot.modality,
            slot.spec.name,
            time.perf_counter() - started,
        )

    @asynccontextmanager
    async def use(self, modality: Modality) -> AsyncIterator[Any]:
        """The modality's model for the duration of one request."""
        slot = self._slots[modality]
        if slot.state is ModelState.LOADED:
            yield slot.instance
            return
        if slot.state is not ModelState.ON_DEMAND:
            raise Unavailable(f"{modality} model is not available ({slot.state}: {slot.detail})")
        assert slot.spec is not None and slot.loader is not None
        # One on-demand load at a time: two concurrent loads would double the memory.
        async with self._on_demand_lock:
            instance = await asyncio.to_thread(slot.loader, slot.spec)
            try:
                yield instance
            finally:
                _close(instance)

    def close(self) -> None:
        for slot in self._slots.values():
            if slot.instance is not None:
                _close(slot.instance)
                slot.instance = None


def _close(instance: Any) -> None:
    close = getattr(instance, "close", None)
    if callable(close):
        close()
