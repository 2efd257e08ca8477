"""A stand-in genserve for the clients' tests: every spec's RPC, answered with canned
events of its interaction, and failures scripted in advance. No models, so the SDK's and
the CLI's contract tests run for every spec in milliseconds, the new ones included."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from genserve.contract import SPECS, Interaction, ModalitySpec
from genserve.contract.events import (
    Chunk,
    Final,
    Header,
    MediaEvent,
    Progress,
    media_event_to_pb,
)
from genserve.contract.spec import enum_names, fields_to_proto_kwargs, message_class

MEDIA_DATA = (b"first chunk, ", b"second chunk")
TEXT_PIECES = ("Hello", " world")


@dataclass(frozen=True)
class Failure:
    """The next call fails with `code` after sending `after` events."""

    code: grpc.StatusCode
    after: int = 0
    trailing: tuple[tuple[str, str], ...] = ()


@dataclass
class Received:
    spec: str
    request: Message
    metadata: dict[str, str]


@dataclass
class FakeServer:
    port: int = 0
    script: list[Failure] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    corrupt: bool = False  # media: announce a sha256 the bytes do not have
    final: dict[str, Any] = field(default_factory=dict)  # text streams: the final's fields
    _server: Any = None

    def start(self) -> FakeServer:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for spec in SPECS:
            by_service.setdefault(spec.service, {})[spec.method] = self._handler(spec)
        for service, methods in by_service.items():
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, methods),)
            )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _handler(self, spec: ModalitySpec[Any, Any]) -> grpc.RpcMethodHandler:
        serialize = spec.event_type.SerializeToString

        def stream(request: Message, context: grpc.ServicerContext) -> Iterator[Message]:
            failure = self._receive(spec, request, context)
            events = self.events(spec)
            for sent, event in enumerate(events):
                if failure is not None and sent == failure.after:
                    self._fail(context, failure)
                yield event
            if failure is not None:
                self._fail(context, failure)

        def unary(request: Message, context: grpc.ServicerContext) -> Message:
            failure = self._receive(spec, request, context)
            if failure is not None:
                self._fail(context, failure)
            return spec.event_type()

        deserialize = message_class(spec.request_descriptor).FromString
        if spec.interaction is Interaction.UNARY:
            return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
        return grpc.unary_stream_rpc_method_handler(stream, deserialize, serialize)

    def _receive(
        self, spec: ModalitySpec[Any, Any], request: Message, context: grpc.ServicerContext
    ) -> Failure | None:
        metadata = {key: value for key, value in context.invocation_metadata()}
        self.received.append(Received(spec.name, request, metadata))
        return self.script.pop(0) if self.script else None

    @staticmethod
    def _fail(context: grpc.ServicerContext, failure: Failure) -> None:
        context.set_trailing_metadata(failure.trailing)
        context.abort(failure.code, f"scripted {failure.code.name}")

    def events(self, spec: ModalitySpec[Any, Any]) -> list[Message]:
        """What a successful call streams, by the spec's interaction and piece alone."""
        event = spec.event_type
        if spec.interaction is Interaction.TEXT_STREAM:
            pieces = [event(**{spec.piece: {"text": text}}) for text in TEXT_PIECES]
            final_type = final_descriptor(spec)
            final = message_class(final_type)(**fields_to_proto_kwargs(final_type, self.final))
            return [*pieces, event(final=final)]
        data = b"".join(MEDIA_DATA)
        digest = hashlib.sha256(b"corrupted" if self.corrupt else data).hexdigest()
        offsets = (0, len(MEDIA_DATA[0]))
        media: list[MediaEvent] = [
            Header("application/octet-stream", f"{spec.name}.bin"),
            Progress(1, 2, "denoising"),
            Progress(2, 2, "denoising"),
            *(Chunk(chunk, offset) for chunk, offset in zip(MEDIA_DATA, offsets, strict=True)),
            Final(len(data), digest, 1.0, 2.0, 3.0, seed=7),
        ]
        return [media_event_to_pb(e) for e in media]


def final_descriptor(spec: ModalitySpec[Any, Any]) -> Descriptor:
    """A text stream's final event's message type."""
    final: Descriptor = spec.event_type.DESCRIPTOR.fields_by_name["final"].message_type
    return final


def sample(field: FieldDescriptor) -> Any:
    """A value of the field's type that is not its default, so that it is sent."""
    if field.type == FieldDescriptor.TYPE_BYTES:
        value: Any = b"uploaded bytes"
    elif field.enum_type is not None:
        value = next(iter(enum_names(field.enum_type).values()))
    elif field.message_type is not None:
        value = {sub.name: sample(sub) for sub in field.message_type.fields}
    else:
        value = {
            FieldDescriptor.CPPTYPE_STRING: "some text",
            FieldDescriptor.CPPTYPE_BOOL: True,
            FieldDescriptor.CPPTYPE_FLOAT: 0.5,
            FieldDescriptor.CPPTYPE_DOUBLE: 0.5,
        }.get(field.cpp_type, 3)  # the integer types
    return [value] if field.is_repeated else value


def every_field(spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    return {f.name: sample(f) for f in spec.request_descriptor.fields}


def every_final_field(spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    """A text stream's final event with every field set (FakeServer.final)."""
    return {f.name: sample(f) for f in final_descriptor(spec).fields}
