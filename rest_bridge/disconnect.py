"""Work for a client that left is cancelled, on every route.

A handler that assembles its answer (plain text, a chat completion, an image as JSON)
never writes while the model runs, and a streamed file not until its next chunk, so
nothing would notice the client's leaving: the model ran on for nobody. Once the request
body is read, this middleware watches the connection, and when the client disconnects
before the response is complete it cancels the handler's task. A task cancelled while it
awaits a gRPC call cancels that call, and the server stops the model.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DISCONNECT: Message = {"type": "http.disconnect"}


def declares_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    if b"transfer-encoding" in headers:
        return True
    try:
        return int(headers.get(b"content-length", b"0")) > 0
    except ValueError:
        return True  # malformed: the server reads it as it can


class ClientDisconnectMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        await _WatchedRequest(receive, send).run(self._app, scope)


class _WatchedRequest:
    """One request: the handler runs in a task of its own, which a watcher of the
    connection cancels if the client goes first."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._gone = asyncio.Event()
        self._app_has_body = False
        self._responded = False
        self._handler: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        self._handler = asyncio.create_task(self._handle(app, scope))
        if not declares_body(scope):
            self._watch()  # nothing for the handler to read first
        try:
            await self._handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._gone.is_set() or (current is not None and current.cancelling()):
                raise  # not ours: the server is stopping
            # ours: the client left, and there is no one to answer
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher

    async def _handle(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self.receive, self.send)

    def _watch(self) -> None:
        self._watcher = asyncio.create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        # Only a body-less request's empty body arrives before the disconnect.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        if not self._responded and self._handler is not None:
            self._handler.cancel()

    async def receive(self) -> Message:
        """The handler's receive: the body as it comes; once the watcher owns the
        connection, the disconnect it sees (as Starlette's own listeners expect)."""
        if self._watcher is not None:
            if not self._app_has_body:
                self._app_has_body = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._gone.wait()
            return DISCONNECT
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._gone.set()
        elif not message.get("more_body", False):
            self._app_has_body = True
            self._watch()
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._responded = True  # the disconnect that follows is the normal end
        await self._send(message)
