"""The model registry: every model of the manifest by name, its engine and its policy.

Policies (chapter 3's serving strategies, side by side in one registry):
- `preload`: loaded before the server reports SERVING, kept.
- `lazy`: loaded on first use, kept; when a memory budget is set and a load would
  exceed it, the least recently used idle lazy model is unloaded first.
- `on_demand`: loaded for each request and dropped after (holds no memory between
  requests). Each on-demand model has its own lock: two requests for it never load two
  copies, and on-demand models of other modalities do not wait for it.

`unload` refuses new requests for the model, drains the ones in flight, then releases
it; `load` brings it back (or pins an on-demand model). A model that failed to load
answers FAILED_PRECONDITION, which clients do not retry; UNAVAILABLE stays for causes
that pass (a preload still running, the server stopping).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from genserve.server.admission import SpeedEstimate
from genserve.server.engine.contract import Engine
from genserve.server.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from genserve.server.manifest import LoadPolicy, Manifest, Modality, ModelSpec

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], Engine[Any, Any]]
"""Builds a model's engine from its spec. Runs on a worker thread."""

LoaderFor = Callable[[Modality, ModelSpec], Loader | None]
"""The loader for a model's engine kind; None when this version has none."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx")


class ModelState(StrEnum):
    PENDING = "pending"  # a preload not finished yet
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADED = "unloaded"  # lazy and not loaded yet, evicted, or unloaded by an operator
    DRAINING = "draining"  # being unloaded: refuses new requests, in-flight ones finish
    ON_DEMAND = "on_demand"  # loads per request
    FAILED = "failed"


@dataclass
class ModelEntry:
    modality: Modality
    spec: ModelSpec
    loader: Loader | None
    state: ModelState
    detail: str = ""
    engine: Engine[Any, Any] | None = None
    held_back: bool = False  # unloaded by an operator: stays so until LoadModel
    in_use: int = 0  # requests holding the model now
    last_used: float = 0.0
    memory_bytes: int = 0  # last measured; an estimate before the first load
    speed: SpeedEstimate = field(default_factory=SpeedEstimate)  # for admission by cost
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one load at a time
    released: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def policy(self) -> LoadPolicy:
        return self.spec.load_policy

    @property
    def ready(self) -> bool:
        """Would a request for it be served (possibly after a load)?"""
        if self.state is ModelState.LOADED:
            # Its engine may depend on something outside the process (upstream, replicas).
            return self.engine is None or self.engine.ready
        if self.state is ModelState.ON_DEMAND:
            return True
        return (
            self.state is ModelState.UNLOADED
            and self.policy is LoadPolicy.LAZY
            and (not self.held_back)
        )

    @property
    def resident_bytes(self) -> int:
        return self.memory_bytes if self.engine is not None else 0


StateListener = Callable[[ModelEntry], Awaitable[None]]


class ModelRegistry:
    def __init__(
        self,
        manifest: Manifest,
        loader_for: LoaderFor,
        *,
        model_store: Path,
        memory_budget_bytes: int = 0,
    ) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._defaults: dict[Modality, str] = {}
        self._model_store = model_store
        self.memory_budget_bytes = memory_budget_bytes
        self._listeners: list[StateListener] = []
        self._closed = False
        for modality in Modality:
            default = manifest.spec_for(modality)
            if default is not None:
                self._defaults[modality] = default.name
            for spec in manifest.specs(modality):
                loader = loader_for(modality, spec)
                entry = ModelEntry(modality, spec, loader, _initial_state(spec, loader))
                if loader is None:
                    entry.detail = f"no {spec.engine or 'default'} engine for {modality} here"
                entry.memory_bytes = _estimate_bytes(spec, model_store)
                self._entries[spec.name] = entry

    # -- lookups ---------------------------------------------------------------------------

    def entries(self, modality: Modality | None = None) -> list[ModelEntry]:
        return [e for e in self._entries.values() if modality is None or e.modality == modality]

    def default_entry(self, modality: Modality) -> ModelEntry | None:
        name = self._defaults.get(modality)
        return self._entries[name] if name is not None else None

    def spec(self, modality: Modality, name: str | None = None) -> ModelSpec | None:
        """The spec a request would get, known before the model loads (its defaults)."""
        if name is None:
            entry = self.default_entry(modality)
            return entry.spec if entry else None
        entry = self._entries.get(name)
        return entry.spec if entry is not None and entry.modality == modality else None

    def resolve(self, modality: Modality, name: str | None) -> ModelEntry:
        """The named model of this modality, or the modality's default; NotFound else."""
        if not name:
            entry = self.default_entry(modality)
            if entry is None:
                raise NotFound(f"no {modality} model is configured on this server")
            return entry
        entry = self._entries.get(name)
        if entry is None or entry.modality != modality:
            known = ", ".join(e.name for e in self.entries(modality)) or "none"
            raise NotFound(f"model: no {modality} model named {name!r} (known: {known})")
        return entry

    def get(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"name: no model named {name!r} (known: {', '.join(self._entries)})")
        return entry

    def resident_bytes(self) -> int:
        return sum(e.resident_bytes for e in self._entries.values())

    def on_change(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    # -- serving -----------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, modality: Modality, name: str | None = None) -> AsyncIterator[Any]:
        """The named (or default) model's engine for the duration of one request."""
        entry = self.resolve(modality, name)
        if entry.state is ModelState.ON_DEMAND:
            async with self._on_demand(entry) as engine:
                yield engine
            return
        if entry.state is ModelState.UNLOADED and entry.ready:
            await self._load(entry)
        engine = self._check_servable(entry)
        entry.in_use += 1
        entry.last_used = time.monotonic()
        try:
            yield engine
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            async with entry.released:
                entry.released.notify_all()

    def _check_servable(self, entry: ModelEntry) -> Engine[Any, Any]:
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another replica")
        if entry.state is ModelState.LOADED and entry.engine is not None:
            return entry.engine
        if entry.state is ModelState.FAILED:
            raise FailedPrecondition(f"model {entry.name} failed to load: {entry.detail}")
        if entry.state in (ModelState.PENDING, ModelState.LOADING):
            raise Unavailable(f"model {entry.name} is still loading; retry shortly")
        if entry.state is ModelState.DRAINING:
            raise FailedPrecondition(f"model {entry.name} is being unloaded")
        raise FailedPrecondition(
            f"model {entry.name} is unloaded; ModelService/LoadModel loads it again"
        )

    @asynccontextmanager
    async def _on_demand(self, entry: ModelEntry) -> AsyncIterator[Any]:
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another replica")
        async with entry.lock:  # this model only: one copy at a time
            await self._make_room(entry)
            engine = await self._build(entry)
            entry.in_use += 1
            try:
                yield engine
            finally:
                entry.in_use -= 1
                entry.engine = None
                await asyncio.to_thread(_close_quietly, engine, entry.name)

    # -- life cycle --------------------------------------------------------------------------

    async def preload(self) -> None:
        """Load every `preload` model, off the event loop. Models in worker processes load
        side by side (each in an interpreter of its own); those in this process load one
        after the other, beside them. Under a memory budget every model loads in turn, so
        each load sees what the ones before it hold."""
        pending = [e for e in self._entries.values() if e.state is ModelState.PENDING]
        if self.memory_budget_bytes:
            await _load_in_turn(self._load, pending)
            return
        apart = [e for e in pending if e.spec.placement == "process"]
        here = [e for e in pending if e.spec.placement != "process"]
        await asyncio.gather(_load_in_turn(self._load, here), *map(self._load, apart))

    async def load(self, name: str) -> ModelEntry:
        """LoadModel: load now and keep (an on-demand model is pinned until unloaded)."""
        entry = self.get(name)
        if entry.loader is None:
            raise FailedPrecondition(f"model {name}: {entry.detail}")
        entry.held_back = False
        if entry.state is ModelState.DRAINING:
            raise FailedPrecondition(f"model {name} is being unloaded; load it after")
        if entry.state is not ModelState.LOADED:
            await self._load(entry, retry_failed=True)
        if entry.state is ModelState.FAILED:
            raise FailedPrecondition(f"model {name} failed to load: {entry.detail}")
        return entry

    async def unload(self, name: str) -> ModelEntry:
        """UnloadModel: refuse new requests, drain those in flight, release the model."""
        entry = self.get(name)
        if entry.policy is LoadPolicy.ON_DEMAND and entry.state is ModelState.ON_DEMAND:
            return entry  # holds nothing between requests already
        if entry.state is ModelState.LOADED:
            await self._release(entry, reason="unloaded by request")
        entry.held_back = entry.policy is not LoadPolicy.ON_DEMAND
        if entry.policy is LoadPolicy.ON_DEMAND:
            entry.state = ModelState.ON_DEMAND
        await self._changed(entry)
        return entry

    async def _load(self, entry: ModelEntry, retry_failed: bool = False) -> None:
        async with entry.lock:
            if entry.state is ModelState.LOADED or (
                entry.state is ModelState.FAILED and not retry_failed
            ):
                return  # another request loaded it (or failed to) while this one waited
            entry.state = ModelState.LOADING
            await self._changed(entry)
            try:
                await self._make_room(entry)
                entry.engine = await self._build(entry)
            except ResourceExhausted:
                entry.state = ModelState.UNLOADED
                raise
            except Exception as exc:  # one model's failure must not stop the rest
                entry.state = ModelState.FAILED
                entry.detail = f"{type(exc).__name__}: {exc}"
                logger.exception("failed to load %s model %s", entry.modality, entry.name)
            else:
                entry.state = ModelState.LOADED
                entry.detail = ""
            finally:
                await self._changed(entry)

    async def _build(self, entry: ModelEntry) -> Engine[Any, Any]:
        assert entry.loader is not None
        started = time.perf_counter()
        engine = await asyncio.to_thread(entry.loader, entry.spec)
        entry.memory_bytes = engine.memory_bytes or entry.memory_bytes
        entry.last_used = time.monotonic()
        logger.info(
            "loaded %s model %s (%s, %.0f MB) in %.1f s",
            entry.modality,
            entry.name,
            entry.spec.load_policy,
            engine.memory_bytes / 2**20,
            time.perf_counter() - started,
        )
        return engine

    async def _release(self, entry: ModelEntry, reason: str) -> None:
        entry.state = ModelState.DRAINING
        await self._changed(entry)
        async with entry.released:
            await entry.released.wait_for(lambda: entry.in_use == 0)
        engine, entry.engine = entry.engine, None
        entry.state = ModelState.UNLOADED
        if engine is not None:
            await asyncio.to_thread(_close_quietly, engine, entry.name)
        logger.info("unloaded %s model %s (%s)", entry.modality, entry.name, reason)

    async def _make_room(self, entry: ModelEntry) -> None:
        """Evict idle lazy models, least recently used first, until `entry` fits."""
        budget = self.memory_budget_bytes
        if not budget:
            return
        while self.resident_bytes() + entry.memory_bytes > budget:
            idle = [
                e
                for e in self._entries.values()
                if e is not entry
                and e.policy is LoadPolicy.LAZY
                and e.state is ModelState.LOADED
                and e.in_use == 0
            ]
            if not idle:
                raise ResourceExhausted(
                    f"model {entry.name} needs ~{entry.memory_bytes / 2**20:.0f} MB; the "
                    f"memory budget of {budget / 2**20:.0f} MB holds "
                    f"{self.resident_bytes() / 2**20:.0f} MB in models that are busy or "
                    "pinned; retry later"
                )
            victim = min(idle, key=lambda e: e.last_used)
            await self._release(victim, reason=f"evicted for {entry.name} (memory budget)")
            await self._changed(victim)

    async def _changed(self, entry: ModelEntry) -> None:
        for listener in self._listeners:
            await listener(entry)

    def close(self, wait_s: float) -> bool:
        """Refuse new requests and release every engine: all are told to stop first, then
        waited for together, up to `wait_s`. False when a model thread is still running
        (it is a daemon: the process can exit without it)."""
        self._closed = True
        engines = [(e.name, e.engine) for e in self._entries.values() if e.engine is not None]
        for entry in self._entries.values():
            entry.engine = None
        for name, engine in engines:
            _close_quietly(engine, name, wait_s=0)
        deadline = time.monotonic() + wait_s
        stopped = True
        for name, engine in engines:
            remaining = max(0.0, deadline - time.monotonic())
            stopped = _close_quietly(engine, name, wait_s=remaining) and stopped
        return stopped


async def _load_in_turn(
    load: Callable[[ModelEntry], Awaitable[None]], entries: list[ModelEntry]
) -> None:
    for entry in entries:
        await load(entry)


def _initial_state(spec: ModelSpec, loader: Loader | None) -> ModelState:
    if loader is None:
        return ModelState.FAILED
    return {
        LoadPolicy.PRELOAD: ModelState.PENDING,
        LoadPolicy.LAZY: ModelState.UNLOADED,
        LoadPolicy.ON_DEMAND: ModelState.ON_DEMAND,
    }[spec.load_policy]


def _estimate_bytes(spec: ModelSpec, model_store: Path) -> int:
    """Weight files on disk, before a model's first load has measured it."""
    if spec.placement == "ray" or not spec.source:  # weights held elsewhere, not here
        return 0
    try:
        source = Path(spec.resolved_source(model_store))
    except FileNotFoundError:
        return 0
    if not source.is_dir():
        return source.stat().st_size if source.is_file() else 0
    files: Iterable[Path] = source.rglob("*")
    return sum(p.stat().st_size for p in files if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _close_quietly(engine: Engine[Any, Any], name: str, wait_s: float | None = None) -> bool:
    try:
        return engine.close() if wait_s is None else engine.close(wait_s)
    except Exception:  # closing one model must not stop the others closing
        logger.exception("closing model %s failed", name)
        return False
