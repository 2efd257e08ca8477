"""The bridge in a background thread on a free port: for tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn

from genserve.bridge.app import create_app
from genserve.bridge.settings import BridgeSettings

STARTUP_TIMEOUT_S = 30


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self._started_event.set()


class BridgeThread:
    def __init__(self, settings: BridgeSettings) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        )
        self._scheme = "https" if settings.ssl_certfile is not None else "http"
        self._started = threading.Event()
        self._server = _Server(config, self._started)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve()), daemon=True
        )
        self.port = 0

    def start(self) -> BridgeThread:
        self._thread.start()
        if not self._started.wait(STARTUP_TIMEOUT_S):
            raise TimeoutError("the bridge did not start")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()
