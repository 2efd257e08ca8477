"""Builds the guard from the settings and the registry, and watches the keys file."""

from __future__ import annotations

import asyncio
import logging

from genserve.server.auth.budget import BudgetBook
from genserve.server.auth.guard import Guard
from genserve.server.auth.store import KeyStore
from genserve.server.auth.throttle import FailureThrottle
from genserve.server.errors import NotFound
from genserve.server.manifest import Modality
from genserve.server.registry import ModelRegistry
from genserve.server.settings import Settings

logger = logging.getLogger(__name__)


def build_guard(settings: Settings, registry: ModelRegistry) -> Guard:
    store = KeyStore(settings.keys_file) if settings.keys_file is not None else None
    auth = settings.auth

    def model_of(modality: Modality, requested: str | None) -> str | None:
        if requested is not None:
            return requested
        default = registry.default_entry(modality)
        return default.name if default is not None else None

    def modality_of(name: str) -> Modality | None:
        try:
            return registry.get(name).modality
        except NotFound:
            return None

    return Guard(
        store,
        mtls=settings.tls.client_ca_file is not None,
        throttle=FailureThrottle(auth.max_failures, auth.failure_window_s, auth.lockout_s),
        budgets=BudgetBook(),
        model_of=model_of,
        modality_of=modality_of,
    )


async def watch_keys(store: KeyStore, interval_s: float) -> None:
    """Reloads the keys file when it changes (its mtime or size), until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            store.reload_if_changed()
        except Exception:  # the watch must outlive any one bad read
            logger.exception("keys file watch failed")
