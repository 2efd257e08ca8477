"""Keeps each model's health current when its engine's readiness changes by itself: an
upstream that stops answering, a remote replica that dies. Engines that can check on
something outside the process have an async `probe()` (each paces its own probes); the
rest are only read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from genserve.server.registry import ModelEntry, ModelRegistry

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


async def _probe(entry: ModelEntry) -> None:
    probe = getattr(entry.engine, "probe", None)
    if probe is None:
        return
    try:
        await probe()
    except Exception:  # a probe that fails says nothing; the next one may
        logger.exception("health probe of %s failed", entry.name)


async def watch_health(
    registry: ModelRegistry,
    report: Callable[[ModelEntry], Awaitable[None]],
    interval_s: float = WATCH_INTERVAL_S,
) -> None:
    """Runs until cancelled: probes, then reports each model whose readiness changed."""
    reported = {entry.name: entry.ready for entry in registry.entries()}
    while True:
        entries = registry.entries()
        await asyncio.gather(*(_probe(entry) for entry in entries))
        for entry in entries:
            if reported.get(entry.name) != entry.ready:
                reported[entry.name] = entry.ready
                logger.info("model %s is %s", entry.name, "ready" if entry.ready else "NOT ready")
                try:
                    await report(entry)
                except Exception:  # the watch must outlive one failed report
                    logger.exception("reporting the health of %s failed", entry.name)
        await asyncio.sleep(interval_s)
