"""An OpenAI-compatible API on the same app, so the official `openai` SDK works unchanged:
chat completions (plain and streamed), embeddings, image generation and speech.

Each route passes its `model` to the server, which serves that model by name; a name the
server does not know for the route's modality is OpenAI's 404 `model_not_found`.
"""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from genserve.bridge import convert
from genserve.bridge.backend import current_metadata
from genserve.bridge.errors import OPENAI_ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.limits import ServerLimits
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.request_id import current_request_id
from genserve.bridge.schemas_openai import (
    VOICES,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingRequest,
    ImageItem,
    ImageList,
    ImageRequest,
    ModelCard,
    ModelList,
    SpeechRequest,
    Usage,
    chat_request_model,
    embedding_request_model,
    image_request_model,
    speech_request_model,
)
from genserve.bridge.settings import BridgeSettings
from genserve.bridge.streams import (
    SSE_EVENT_SCHEMA,
    ends_with,
    first_event,
    media_file_response,
    openai_sse_error,
    until_end,
)
from genserve.v1 import audio_pb2, embedding_pb2, image_pb2, models_pb2, text_pb2


def chat_request_pb(body: ChatCompletionRequest) -> text_pb2.TextGenerateRequest:
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    fields: dict[str, Any] = {
        "messages": [
            text_pb2.ChatMessage(role=_role(m.role), content=m.text()) for m in body.messages
        ],
        "system_prompt": "",  # an OpenAI caller sends its own system turn, or none
        "stop": stop,
        "model": body.model,
    }
    max_tokens = body.max_completion_tokens or body.max_tokens
    for name, value in (
        ("max_new_tokens", max_tokens),
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
    ):
        if value is not None:
            fields[name] = value
    return text_pb2.TextGenerateRequest(**fields)


def speech_request_pb(body: SpeechRequest) -> audio_pb2.AudioGenerateRequest:
    request = audio_pb2.AudioGenerateRequest(prompt=body.input, model=body.model)
    if body.voice is not None:  # unset: the model's manifest default, on the server
        request.preset = VOICES.get(body.voice, body.voice)
    return request


def _role(role: str) -> str:
    return "system" if role == "developer" else role


@contextmanager
def unknown_model_is_model_not_found() -> Iterator[None]:
    """The server's NOT_FOUND for a generation is about its model: OpenAI's SDK expects
    code `model_not_found` on the `model` parameter."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        message = error.details() or "no such model"
        raise BridgeError(404, "model_not_found", message, param="model") from error


@dataclass(frozen=True)
class Completion:
    """What every chunk of one chat completion repeats."""

    id: str
    created: int
    model: str

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return {"data": json.dumps(body)}

    def delta(self, delta: dict[str, Any], finish: str | None) -> dict[str, str]:
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": finish}])


async def chat_chunks(
    call: Any, first: Any, completion: Completion, include_usage: bool, metrics: BridgeMetrics
) -> AsyncIterator[dict[str, str]]:
    try:
        yield completion.delta({"role": "assistant", "content": ""}, None)
        event = first
        while event.HasField("delta"):
            yield completion.delta({"content": event.delta.text}, None)
            event = await call.read()
        final = event.final
        metrics.tokens.inc(final.usage.completion_tokens)
        await until_end(call)
        yield completion.delta({}, _openai_finish(final))
        if include_usage:
            yield completion.chunk([], usage=_usage(final.usage).model_dump())
        yield {"data": "[DONE]"}
    except grpc.aio.AioRpcError as error:
        # The 200 is sent already: the error goes as an event, which the SDK raises.
        yield openai_sse_error(error)
    finally:
        call.cancel()


async def chat_completion(
    call: Any, first: Any, completion: Completion, metrics: BridgeMetrics
) -> ChatCompletion:
    pieces: list[str] = []
    event = first
    while event.HasField("delta"):
        pieces.append(event.delta.text)
        event = await first_event(call)
    final = event.final
    metrics.tokens.inc(final.usage.completion_tokens)
    await until_end(call)
    choice = Choice(
        index=0,
        message=AssistantMessage(content="".join(pieces)),
        finish_reason=_openai_finish(final),
    )
    return ChatCompletion(
        id=completion.id,
        created=completion.created,
        model=completion.model,
        choices=[choice],
        usage=_usage(final.usage),
    )


def build_openai_router(
    backend: Any, limits: ServerLimits, settings: BridgeSettings, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        tags=["openai"],
        responses={
            **documented_errors(OPENAI_ERROR_SCHEMA),
            404: {
                "description": "no model of that name serves this route (see /v1/models)",
                "content": {"application/json": {"schema": OPENAI_ERROR_SCHEMA}},
            },
        },
    )
    timeouts = settings.timeouts
    ChatRequest = chat_request_model(limits.text)
    EmbeddingBody = embedding_request_model(limits.embedding)
    ImageGenerationRequest = image_request_model(limits.image)
    SpeechBody = speech_request_model(limits.audio)

    stubs = backend.stubs

    metadata = current_metadata

    @router.get("/models", response_model=ModelList)
    async def list_models() -> ModelList:
        """Every model the server knows, of every modality."""
        reply = await stubs().models.ListModels(
            models_pb2.ListModelsRequest(), metadata=metadata(), timeout=timeouts.health
        )
        return ModelList(data=[ModelCard(id=m.name) for m in reply.models])

    @router.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}},
    )
    async def chat_completions(body: ChatRequest) -> Any:  # type: ignore[valid-type]
        chat: ChatCompletionRequest = body
        call = stubs().text.Generate(
            chat_request_pb(chat), metadata=metadata(), timeout=timeouts.text
        )
        with unknown_model_is_model_not_found():
            first = await first_event(call)
        completion = Completion(f"chatcmpl-{current_request_id()}", int(time.time()), chat.model)
        if not chat.stream:
            with ends_with(call):
                return await chat_completion(call, first, completion, metrics)
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        chunks = chat_chunks(call, first, completion, include_usage, metrics)
        return EventSourceResponse(chunks, ping=15)

    @router.post("/embeddings", response_model=EmbeddingList)
    async def embeddings(body: EmbeddingBody) -> EmbeddingList:  # type: ignore[valid-type]
        request: EmbeddingRequest = body
        texts = [request.input] if isinstance(request.input, str) else request.input
        with unknown_model_is_model_not_found():
            reply = await stubs().embedding.Embed(
                embedding_pb2.EmbedRequest(texts=texts, model=request.model),
                metadata=metadata(),
                timeout=timeouts.embedding,
            )
        data = []
        for index, vector in enumerate(reply.embeddings):
            values: list[float] | str = list(vector.values)
            if request.encoding_format == "base64":  # what the openai SDK asks for by default
                values = base64.b64encode(np.asarray(vector.values, dtype="<f4").tobytes()).decode()
            data.append(EmbeddingItem(index=index, embedding=values))
        tokens = reply.prompt_tokens
        return EmbeddingList(
            data=data,
            model=reply.model,
            usage=Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
        )

    @router.post("/images/generations", response_model=ImageList)
    async def images(body: ImageGenerationRequest) -> ImageList:  # type: ignore[valid-type]
        request: ImageRequest = body
        fields: dict[str, Any] = {"prompt": request.prompt}
        if request.model is not None:  # unset: the server's default image model
            fields["model"] = request.model
        if request.size:
            width, height = (int(v) for v in request.size.split("x"))
            fields.update(width=width, height=height)
        call = stubs().image.Generate(
            image_pb2.ImageGenerateRequest(**fields), metadata=metadata(), timeout=timeouts.media
        )
        png = bytearray()
        with ends_with(call), unknown_model_is_model_not_found():
            async for event in call:
                if event.HasField("chunk"):
                    png += event.chunk.data
        return ImageList(
            created=int(time.time()), data=[ImageItem(b64_json=base64.b64encode(png).decode())]
        )

    @router.post(
        "/audio/speech",
        response_class=Response,
        responses={
            200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}}
        },
    )
    async def speech(body: SpeechBody) -> Response:  # type: ignore[valid-type]
        call = stubs().audio.Generate(
            speech_request_pb(body), metadata=metadata(), timeout=timeouts.media
        )
        with unknown_model_is_model_not_found():
            return await media_file_response(call, attachment=False)

    return router


def _usage(usage: text_pb2.TokenUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _openai_finish(final: text_pb2.TextFinal) -> str:
    return "length" if convert.finish_reason(final) == "length" else "stop"
