"""HTTP callers' API keys: the same keys file and checks as the gRPC server.

Missing or wrong key: 401 with `WWW-Authenticate: Bearer`; too many wrong keys from one
client address: 429 with Retry-After, for a while. Health probes and the API docs stay
open. The caller's Authorization header is passed on to the server (server_link.py), which
checks the key again and decides what it may call (403) and whether it is over its
budget (429). The keys file is re-read on SIGHUP, or when it has changed, at most every
`auth.watch_s` seconds, on the next request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from genserve.bridge.errors import error_body
from genserve.bridge.request_id import current_request_id
from genserve.bridge.server_link import caller_authorization_var
from genserve.server.auth.guard import bearer_token
from genserve.server.auth.store import KeyStore
from genserve.server.auth.throttle import FailureThrottle
from genserve.server.settings import AuthSettings

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PATHS |= {"/openapi.json"}
WWW_AUTHENTICATE = 'Bearer realm="genserve"'
MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"

# The key id of the HTTP request being served, for the bridge's access log.
key_id_var: ContextVar[str | None] = ContextVar("bridge_key_id", default=None)


class BridgeAuth:
    def __init__(
        self, store: KeyStore, settings: AuthSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.throttle = FailureThrottle(
            settings.max_failures, settings.failure_window_s, settings.lockout_s, clock
        )
        self._watch_s = settings.watch_s
        self._clock = clock
        self._checked = clock()

    def reload_if_due(self) -> None:
        if self._watch_s <= 0:
            return
        now = self._clock()
        if now - self._checked >= self._watch_s:
            self._checked = now
            self.store.reload_if_changed()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: BridgeAuth | None) -> None:
        self._app = app
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"),
            None,
        )
        caller_authorization_var.set(header)
        auth = self._auth
        if auth is None or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        auth.reload_if_due()
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        wait = auth.throttle.blocked_for(peer)
        if wait is not None:
            message = f"too many failed attempts from this address: retry in {math.ceil(wait)} s"
            response = _refusal(scope, 429, "RESOURCE_EXHAUSTED", message)
            response.headers["Retry-After"] = str(math.ceil(wait))
            await response(scope, receive, send)
            return
        token = bearer_token(header)
        entry = await auth.store.authenticate(token) if token is not None else None
        if entry is None:
            if token is not None:
                auth.throttle.failed(peer)
            message = "invalid API key" if token else MISSING_KEY
            response = _refusal(scope, 401, "UNAUTHENTICATED", message)
            challenge = WWW_AUTHENTICATE + (', error="invalid_token"' if token else "")
            response.headers["WWW-Authenticate"] = challenge
            await response(scope, receive, send)
            return
        key_id_var.set(entry.id)
        await self._app(scope, receive, send)


def _refusal(scope: Scope, status: int, code: str, message: str) -> JSONResponse:
    text = f"{message}; request_id={current_request_id()}"
    return JSONResponse(status_code=status, content=error_body(scope["path"], status, code, text))
