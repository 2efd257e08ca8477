"""The blocking transport: `GenServe("localhost:50051")`. Requests, retries and stream
assembly come from the sans-IO core (calls, request, retry, folds); this file sends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Generic, ParamSpec, TypeVar

import grpc
from google.protobuf.message import Message

from genserve.contract import ModalitySpec
from genserve.contract.events import MediaEvent
from genserve.contract.modalities.transcription import Segment

from . import admin, defaults
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
from .jobs import JobsMixin
from .results import Catalog, MediaResult, ModelInfo, PiecesResult, TextResult, Transcript

P = ParamSpec("P")
R = TypeVar("R")


class GenServe(JobsMixin, ClientBase):
    """A connection to a genserve server. Use as a context manager, or call close()."""

    _grpc = grpc  # its channels

    # -- modalities, typed by their spec ---------------------------------------------------

    def media_calls(self, spec: ModalitySpec[P, Any]) -> StreamCalls[P, MediaEvent, MediaResult]:
        return StreamCalls(self, expect(spec, Kind.MEDIA), MediaFold)

    def text_calls(self, spec: ModalitySpec[P, Any]) -> StreamCalls[P, str, TextResult]:
        return StreamCalls(self, expect(spec, Kind.TEXT), piece_fold(TextFold, spec))

    def transcript_calls(self, spec: ModalitySpec[P, Any]) -> StreamCalls[P, Segment, Transcript]:
        fold = piece_fold(TranscriptFold, spec)
        return StreamCalls(self, expect(spec, Kind.TRANSCRIPT), fold)

    def pieces_calls(
        self, spec: ModalitySpec[P, Any]
    ) -> StreamCalls[P, dict[str, Any], PiecesResult]:
        """Any text stream: its pieces as plain fields, the text by the spec's join."""
        return StreamCalls(self, expect(spec, Kind.PIECES), piece_fold(PiecesFold, spec))

    def unary_calls(self, spec: ModalitySpec[P, Any]) -> UnaryCalls[P]:
        return UnaryCalls(self, expect(spec, Kind.UNARY))

    # -- the server ----------------------------------------------------------------------

    def health(self, service: str = "", timeout: float = defaults.HEALTH_TIMEOUT_S) -> str:
        """SERVING, NOT_SERVING, ... for the server ("") or one service name."""
        return self._admin(admin.health(service, timeout))

    def catalog(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> Catalog:
        """ListModels: the models and their states, and each modality's limits."""
        return self._admin(admin.list_models(timeout))

    def models(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> list[ModelInfo]:
        return list(self.catalog(timeout).models)

    def load_model(self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S) -> ModelInfo:
        """Loads a model now and keeps it (LoadModel); returns once it is loaded."""
        return self._admin(admin.load_model(name, timeout))

    def unload_model(self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S) -> ModelInfo:
        """Refuses new requests for the model, drains those in flight, releases it."""
        return self._admin(admin.unload_model(name, timeout))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GenServe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending -------------------------------------------------------------------------

    def _admin(self, call: admin.AdminCall[R]) -> R:
        return call.read(self._unary(call.rpc, call.request, call.timeout, new_request_id()))

    def _unary(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Any:
        method = self._channel.unary_unary(
            rpc.path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=rpc.reply_type.FromString,
        )
        attempts = self.options.retry.attempts()
        while True:
            try:
                return method(request, timeout=timeout, metadata=self.options.metadata(request_id))
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error, received_anything=False)
                if delay is None:
                    raise from_rpc_error(error, request_id) from None
                time.sleep(delay)

    def _stream(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Iterator[Any]:
        """Server-streaming call, retried before the first event. Leaving the loop early
        (break, close, an exception) cancels the call, and the server stops."""
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
                for event in call:
                    received = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error, received)
                if delay is None:
                    raise from_rpc_error(error, request_id) from None
                time.sleep(delay)
            finally:
                call.cancel()  # a no-op once the call has finished


class StreamCalls(BaseCalls[P], Generic[P, PieceT, ResultT]):
    """A streaming modality's calls: `stream()` yields pieces as they come (text deltas,
    transcript segments, media events), `generate()` returns the whole result. The
    arguments are the proto request's fields; unset ones take the server's defaults."""

    _client: GenServe

    def __init__(
        self, client: GenServe, spec: ModalitySpec[P, Any], fold: FoldFactory[PieceT, ResultT]
    ) -> None:
        super().__init__(client, spec)
        self._fold = fold

    def stream(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[PieceT]:
        call = self._prepare(args, kwargs)
        fold = self._fold(call.request_id, self.options.on_progress, False)
        for event in self._client._stream(call.rpc, call.request, call.timeout, call.request_id):
            piece = fold.feed(event)
            if piece is not None:
                yield piece

    def generate(self, *args: P.args, **kwargs: P.kwargs) -> ResultT:
        call = self._prepare(args, kwargs)
        fold = self._fold(call.request_id, self.options.on_progress, True)
        # Read to the end of the stream, not just to the final event: leaving early
        # cancels the call, and a call cancelled before its OK status is logged CANCELLED.
        for event in self._client._stream(call.rpc, call.request, call.timeout, call.request_id):
            fold.feed(event)
        return fold.result()


class UnaryCalls(BaseCalls[P]):
    """A unary modality's calls: `create()` returns the reply as plain fields."""

    _client: GenServe

    def create(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        call = self._prepare(args, kwargs)
        return reply_fields(
            self._client._unary(call.rpc, call.request, call.timeout, call.request_id)
        )
