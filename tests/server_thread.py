"""A real genserve server on its own event loop in a background thread.

For tests, benchmarks and notebooks: start it on port 0, then talk to it over a real
channel with the generated stubs, exactly as an internal service would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from genserve.server.app import GenServeServer
from genserve.server.engine.contract import Engine, EngineStats
from genserve.server.manifest import Manifest
from genserve.server.registry import LoaderFor
from genserve.server.settings import Settings

T = TypeVar("T")

READY_TIMEOUT_S = 30
REPO_ROOT = Path(__file__).resolve().parent.parent  # tests/ sits in the repository root
MODEL_STORE = REPO_ROOT / "var" / "models"  # built by `make models`


class ServerThread:
    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        loader_for: LoaderFor | None = None,
    ) -> None:
        self._settings = settings
        self._manifest = manifest
        self._loader_for = loader_for
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: GenServeServer = self.run(self._create())
        self.port = 0

    async def _create(self) -> GenServeServer:
        return GenServeServer(self._settings, self._manifest, self._loader_for)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self, load: bool = True) -> ServerThread:
        self.port = self.run(self.server.start())
        if load:
            self.load()
        return self

    def load(self) -> None:
        self.run(self.server.load_models())

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(f"localhost:{self.port}")
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        return channel

    def stop(self, grace: float = 0) -> None:
        self.run(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def usage_rows(self, request_id: str) -> list[sqlite3.Row]:
        self.server.usage_log.flush()
        with sqlite3.connect(self.server.usage_log.path) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchall()

    def wait_for_usage_row(self, request_id: str, timeout: float = 10) -> sqlite3.Row:
        """The row is written when the server finishes the call, which may be just after
        the client has seen the end of it (a cancel); wait for it, boundedly."""
        return wait_until(lambda: next(iter(self.usage_rows(request_id)), None), timeout)


def wait_until(probe: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": 0,
            "data_dir": data_dir,
            "model_store": MODEL_STORE,
            **overrides,
        }
    )


def settled_stats(engine: Engine[Any, Any], timeout: float = 60) -> EngineStats:
    """The engine's stats once it is idle. A worker process reports its stats every
    0.2 s, so just after another test's cancel the last report may still show that
    request in flight and not yet cancelled; waiting for idle asks for fresh ones."""
    assert engine.wait_idle(timeout), "the engine did not go idle"
    return engine.stats()
