"""The asyncio transport: `AsyncGenServe("localhost:50051")`, the same shape as GenServe
with awaitable calls and async streams. Only the sending differs; the rest is the core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Generic, ParamSpec, TypeVar

import grpc
from google.protobuf.message import Message

from genserve.contract import ModalitySpec
from genserve.contract.events import MediaEvent
from genserve.contract.modalities.transcription import Segment

from . import admin, defaults
from .async_jobs import AsyncJobsMixin
from .calls import BaseCalls, ClientBase, Kind, Rpc, expect
from .channel import new_request_id
from .errors import from_rpc_error
from .folds import (
    FoldFactory,
    MediaFold,
    PiecesFold,
    PieceT,
    ResultT,
    TextFold,
    TranscriptFold,
    piece_fold,
    reply_fields,
)
from .results import Catalog, MediaResult, ModelInfo, PiecesResult, TextResult, Transcript

P = ParamSpec("P")
R = TypeVar("R")


class AsyncGenServe(AsyncJobsMixin, ClientBase):
    """An asyncio connection. Use as `async with`, or await close()."""

    _grpc = grpc.aio  # its channels

    # -- modalities, typed by their spec ---------------------------------------------------

    def media_calls(
        self, spec: ModalitySpec[P, Any]
    ) -> AsyncStreamCalls[P, MediaEvent, MediaResult]:
        return AsyncStreamCalls(self, expect(spec, Kind.MEDIA), MediaFold)

    def text_calls(self, spec: ModalitySpec[P, Any]) -> AsyncStreamCalls[P, str, TextResult]:
        return AsyncStreamCalls(self, expect(spec, Kind.TEXT), piece_fold(TextFold, spec))

    def transcript_calls(
        self, spec: ModalitySpec[P, Any]
    ) -> AsyncStreamCalls[P, Segment, Transcript]:
        fold = piece_fold(TranscriptFold, spec)
        return AsyncStreamCalls(self, expect(spec, Kind.TRANSCRIPT), fold)

    def pieces_calls(
        self, spec: ModalitySpec[P, Any]
    ) -> AsyncStreamCalls[P, dict[str, Any], PiecesResult]:
        """Any text stream: its pieces as plain fields, the text by the spec's join."""
        return AsyncStreamCalls(self, expect(spec, Kind.PIECES), piece_fold(PiecesFold, spec))

    def unary_calls(self, spec: ModalitySpec[P, Any]) -> AsyncUnaryCalls[P]:
        return AsyncUnaryCalls(self, expect(spec, Kind.UNARY))

    # -- the server ----------------------------------------------------------------------

    async def health(self, service: str = "", timeout: float = defaults.HEALTH_TIMEOUT_S) -> str:
        return await self._admin(admin.health(service, timeout))

    async def catalog(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> Catalog:
        return await self._admin(admin.list_models(timeout))

    async def models(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> list[ModelInfo]:
        return list((await self.catalog(timeout)).models)

    async def load_model(
        self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S
    ) -> ModelInfo:
        return await self._admin(admin.load_model(name, timeout))

    async def unload_model(
        self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S
    ) -> ModelInfo:
        return await self._admin(admin.unload_model(name, timeout))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGenServe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sending -------------------------------------------------------------------------

    async def _admin(self, call: admin.AdminCall[R]) -> R:
        return call.read(await self._unary(call.rpc, call.request, call.timeout, new_request_id()))

    async def _unary(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Any:
        method = self._channel.unary_unary(
            rpc.path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.reply_type.FromString,
        )
        attempts = self.options.retry.attempts()
        while True:
            try:
                metadata = self.options.metadata(request_id)
                return await method(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error, received_anything=False)
                if delay is None:
                    raise from_rpc_error(error, request_id) from None
                await asyncio.sleep(delay)

    async def _stream(
        self, rpc: Rpc, request: Message, timeout: float, request_id: str
    ) -> AsyncGenerator[Any, None]:
        """Retried before the first event; leaving early cancels the call on the server."""
        method = self._channel.unary_stream(
            rpc.path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.reply_type.FromString,
        )
        attempts = self.options.retry.attempts()
        while True:
            call = method(request, timeout=timeout, metadata=self.options.metadata(request_id))
            received = False
            try:
                async for event in call:
                    received = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error, received)
                if delay is None:
                    raise from_rpc_error(error, request_id) from None
                await asyncio.sleep(delay)
            finally:
                call.cancel()


class AsyncStreamCalls(BaseCalls[P], Generic[P, PieceT, ResultT]):
    """GenServe's StreamCalls, awaited: `async for piece in calls.stream(...)`,
    `await calls.generate(...)`."""

    _client: AsyncGenServe

    def __init__(
        self,
        client: AsyncGenServe,
        spec: ModalitySpec[P, Any],
        fold: FoldFactory[PieceT, ResultT],
    ) -> None:
        super().__init__(client, spec)
        self._fold = fold

    async def stream(self, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[PieceT, None]:
        call = self._prepare(args, kwargs)
        fold = self._fold(call.request_id, self.options.on_progress, False)
        events = self._client._stream(call.rpc, call.request, call.timeout, call.request_id)
        # aclosing: a caller that stops early cancels the call now, not at garbage collection.
        async with aclosing(events):
            async for event in events:
                piece = fold.feed(event)
                if piece is not None:
                    yield piece

    async def generate(self, *args: P.args, **kwargs: P.kwargs) -> ResultT:
        call = self._prepare(args, kwargs)
        fold = self._fold(call.request_id, self.options.on_progress, True)
        events = self._client._stream(call.rpc, call.request, call.timeout, call.request_id)
        async for event in events:  # to the end: see StreamCalls.generate
            fold.feed(event)
        return fold.result()


class AsyncUnaryCalls(BaseCalls[P]):
    _client: AsyncGenServe

    async def create(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        call = self._prepare(args, kwargs)
        reply = await self._client._unary(call.rpc, call.request, call.timeout, call.request_id)
        return reply_fields(reply)
