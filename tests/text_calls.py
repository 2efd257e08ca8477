"""Small helpers to call TextService through the generated stubs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from genserve.server.manifest import Modality
from genserve.server.text.batching_engine import BatchingTextEngine
from genserve.server.text.engine import TextEngine
from genserve.server.text.llama_engine import LlamaCppTextEngine
from genserve.server.text.transformers_engine import SerialTextEngine
from genserve.server.worker.process_engine import ProcessEngine
from genserve.v1 import text_pb2, text_pb2_grpc
from tests.server_thread import ServerThread


@dataclass
class TextResult:
    deltas: list[str] = field(default_factory=list)
    final: text_pb2.TextFinal | None = None
    request_id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def request(prompt: str = "What is FastAPI?", **fields: Any) -> text_pb2.TextGenerateRequest:
    return text_pb2.TextGenerateRequest(prompt=prompt, **fields)


def generate(
    channel: grpc.Channel,
    req: text_pb2.TextGenerateRequest,
    request_id: str | None = None,
    timeout: float = 120,
) -> TextResult:
    stub = text_pb2_grpc.TextServiceStub(channel)
    metadata = (("x-request-id", request_id),) if request_id else None
    call = stub.Generate(req, metadata=metadata, timeout=timeout)
    result = collect_text(call)
    result.request_id = dict(call.initial_metadata())["x-request-id"]
    return result


def collect_text(call: Any) -> TextResult:
    """A TextService/Generate stream read to its end: its deltas and its final event."""
    result = TextResult()
    for response in call:
        if response.HasField("delta"):
            result.deltas.append(response.delta.text)
        else:
            result.final = response.final
    return result


def greedy(
    prompt: str = "What is FastAPI?", max_new_tokens: int = 12, **fields: Any
) -> text_pb2.TextGenerateRequest:
    return request(prompt, max_new_tokens=max_new_tokens, do_sample=False, **fields)


def served_text_engine(server: ServerThread, name: str | None = None) -> TextEngine | ProcessEngine:
    """The text engine the server runs for `name` (its default model when None): in
    process, or the server's side of a worker process (its stats cross the boundary)."""
    engine = server.server.registry.resolve(Modality.TEXT, name).engine
    assert isinstance(
        engine, LlamaCppTextEngine | BatchingTextEngine | SerialTextEngine | ProcessEngine
    )
    return engine
