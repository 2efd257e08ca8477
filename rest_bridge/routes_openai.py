"""An OpenAI-compatible API on the same app, so the official `openai` SDK works unchanged:
chat completions (plain and streamed), embeddings, image generation and speech."""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, create_model
from sse_starlette import EventSourceResponse

from genserve.v1 import (
    audio_pb2,
    embedding_pb2,
    image_pb2,
    models_pb2,
    text_pb2,
)
from rest_bridge import convert
from rest_bridge.backend import request_metadata
from rest_bridge.errors import BridgeError
from rest_bridge.observability import BridgeMetrics
from rest_bridge.request_id import current_request_id
from rest_bridge.settings import BridgeSettings, PublicLimits
from rest_bridge.streams import first_event, media_file_response

OPENAI_MODEL = ConfigDict(extra="ignore")  # the SDK may send fields we do not use
# OpenAI's voice names, mapped onto Bark presets; a Bark preset name works as well.
VOICES = {
    "alloy": "v2/en_speaker_1",
    "echo": "v2/en_speaker_2",
    "fable": "v2/en_speaker_3",
    "onyx": "v2/en_speaker_4",
    "nova": "v2/en_speaker_5",
    "shimmer": "v2/en_speaker_6",
}


class ChatMessage(BaseModel):
    model_config = OPENAI_MODEL
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class StreamOptions(BaseModel):
    model_config = OPENAI_MODEL
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)  # bounded per app: see chat_request_model
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class EmbeddingRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: str | list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ImageRequest(BaseModel):
    model_config = OPENAI_MODEL
    prompt: str = Field(min_length=1, max_length=2000)
    model: str | None = None
    n: int = Field(1, ge=1, le=1)
    size: str | None = Field(None, pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$")
    response_format: Literal["b64_json", "url"] | None = None


class ImageItem(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageList(BaseModel):
    created: int
    data: list[ImageItem]


class SpeechRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: str = Field(min_length=1, max_length=500)  # Bark's prompt limit on the server
    voice: str
    response_format: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "genserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def chat_request_model(limits: PublicLimits) -> type[ChatCompletionRequest]:
    """The request model with the app's token bound, so the OpenAPI document states it."""
    bounded: Any = (int | None, Field(None, ge=1, le=limits.max_new_tokens))
    model: type[ChatCompletionRequest] = create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        max_tokens=bounded,
        max_completion_tokens=bounded,
    )
    return model


def image_size(size: str, limits: PublicLimits) -> tuple[int, int]:
    width, height = (int(v) for v in size.split("x"))
    for name, value in (("width", width), ("height", height)):
        if not 64 <= value <= limits.max_side or value % 8:
            raise BridgeError(
                422,
                "INVALID_ARGUMENT",
                f"size: {name} must be a multiple of 8 between 64 and {limits.max_side}",
            )
    return width, height


def chat_request_pb(body: ChatCompletionRequest) -> text_pb2.TextGenerateRequest:
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    fields: dict[str, Any] = {
        "messages": [
            text_pb2.ChatMessage(role=_role(m.role), content=m.text()) for m in body.messages
        ],
        "system_prompt": "",  # an OpenAI caller sends its own system turn, or none
        "stop": stop,
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


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def build_openai_router(
    backend: Any, settings: BridgeSettings, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    timeouts = settings.timeouts
    ChatRequest = chat_request_model(settings.limits)

    def metadata() -> tuple[tuple[str, str], ...]:
        return request_metadata(current_request_id())

    @router.get("/models", response_model=ModelList)
    async def list_models() -> ModelList:
        reply = await backend.current.models.ListModels(
            models_pb2.ListModelsRequest(), metadata=metadata(), timeout=timeouts.health
        )
        return ModelList(data=[ModelCard(id=m.name) for m in reply.models if m.name])

    @router.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def chat_completions(body: ChatRequest) -> Any:  # type: ignore[valid-type]
        chat: ChatCompletionRequest = body
        call = backend.current.text.Generate(
            chat_request_pb(body), metadata=metadata(), timeout=timeouts.text
        )
        first = await first_event(call)
        completion_id = f"chatcmpl-{current_request_id()}"
        created = int(time.time())
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            chunks = chat_chunks(call, first, completion_id, created, chat.model, include_usage)
            return EventSourceResponse(chunks, ping=15)
        pieces: list[str] = []
        event = first
        while event.HasField("delta"):
            pieces.append(event.delta.text)
            event = await first_event(call)
        final = event.final
        metrics.tokens.inc(final.usage.completion_tokens)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=chat.model,
            choices=[
                Choice(
                    index=0,
                    message=AssistantMessage(content="".join(pieces)),
                    finish_reason=_openai_finish(final),
                )
            ],
            usage=_usage(final.usage),
        )

    async def chat_chunks(
        call: Any, first: Any, completion_id: str, created: int, model: str, include_usage: bool
    ) -> AsyncIterator[dict[str, str]]:
        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, str]:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return {"data": json.dumps(body)}

        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            event = first
            while event.HasField("delta"):
                yield chunk({"content": event.delta.text}, None)
                event = await call.read()
            final = event.final
            metrics.tokens.inc(final.usage.completion_tokens)
            yield chunk({}, _openai_finish(final))
            if include_usage:
                usage = _usage(final.usage).model_dump()
                yield {
                    "data": json.dumps(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                }
            yield {"data": "[DONE]"}
        finally:
            call.cancel()

    @router.post("/embeddings", response_model=EmbeddingList)
    async def embeddings(body: EmbeddingRequest) -> EmbeddingList:
        texts = [body.input] if isinstance(body.input, str) else body.input
        reply = await backend.current.embedding.Embed(
            embedding_pb2.EmbedRequest(texts=texts), metadata=metadata(), timeout=timeouts.embedding
        )
        data = []
        for index, vector in enumerate(reply.embeddings):
            values: list[float] | str = list(vector.values)
            if body.encoding_format == "base64":  # what the openai SDK asks for by default
                values = base64.b64encode(np.asarray(vector.values, dtype="<f4").tobytes()).decode()
            data.append(EmbeddingItem(index=index, embedding=values))
        tokens = reply.prompt_tokens
        return EmbeddingList(
            data=data,
            model=reply.model,
            usage=Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
        )

    @router.post("/images/generations", response_model=ImageList)
    async def images(body: ImageRequest) -> ImageList:
        if body.response_format == "url":
            raise BridgeError(400, "INVALID_ARGUMENT", "response_format: only b64_json is served")
        fields: dict[str, Any] = {"prompt": body.prompt}
        if body.size:
            width, height = image_size(body.size, settings.limits)
            fields.update(width=width, height=height)
        call = backend.current.image.Generate(
            image_pb2.ImageGenerateRequest(**fields), metadata=metadata(), timeout=timeouts.media
        )
        png = bytearray()
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
    async def speech(body: SpeechRequest) -> Response:
        if body.response_format not in (None, "wav"):
            raise BridgeError(400, "INVALID_ARGUMENT", "response_format: only wav is served")
        preset = VOICES.get(body.voice, body.voice)
        call = backend.current.audio.Generate(
            audio_pb2.AudioGenerateRequest(prompt=body.input, preset=preset),
            metadata=metadata(),
            timeout=timeouts.media,
        )
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
