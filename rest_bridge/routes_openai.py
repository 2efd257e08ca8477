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
from genserve.bridge import convert
from genserve.bridge.backend import request_metadata
from genserve.bridge.errors import OPENAI_ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.request_id import current_request_id
from genserve.bridge.settings import BridgeSettings, PublicLimits
from genserve.bridge.streams import SSE_EVENT_SCHEMA, first_event, media_file_response, until_end

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


NOT_BLANK = r"\S"


MessageText = Annotated[str, Field(max_length=8192, pattern=NOT_BLANK)]


class TextPart(BaseModel):
    model_config = OPENAI_MODEL
    type: Literal["text"]
    text: MessageText


class ChatMessage(BaseModel):
    model_config = OPENAI_MODEL
    role: Literal["system", "developer", "user", "assistant"]
    content: MessageText | Annotated[list[TextPart], Field(min_length=1, max_length=16)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


StopSequence = Annotated[str, Field(min_length=1, max_length=64)]


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
    stop: StopSequence | list[StopSequence] | None = Field(None, max_length=4)
    seed: int | None = Field(None, ge=-(2**53 - 1), le=2**53 - 1)
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


EmbeddingText = Annotated[str, Field(max_length=8192, pattern=NOT_BLANK)]


class EmbeddingRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: EmbeddingText | list[EmbeddingText] = Field(min_length=1, max_length=64)
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
    prompt: str = Field(max_length=2000, pattern=NOT_BLANK)
    model: str | None = None
    n: int = Field(1, ge=1, le=1)
    size: str | None = None  # an enum of the sizes the app serves: see image_request_model
    response_format: Literal["b64_json"] | None = Field(None, description="no URLs: b64_json")


class ImageItem(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageList(BaseModel):
    created: int
    data: list[ImageItem]


Voice = Literal[
    "alloy",
    "echo",
    "fable",
    "onyx",
    "nova",
    "shimmer",
    "v2/en_speaker_0",
    "v2/en_speaker_1",
    "v2/en_speaker_2",
    "v2/en_speaker_3",
    "v2/en_speaker_4",
    "v2/en_speaker_5",
    "v2/en_speaker_6",
    "v2/en_speaker_7",
    "v2/en_speaker_8",
    "v2/en_speaker_9",
]


class SpeechRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: str = Field(max_length=500, pattern=NOT_BLANK)  # Bark's prompt limit on the server
    voice: Voice
    response_format: Literal["wav"] | None = Field(None, description="WAV is what is served")


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
    messages: Any = (list[ChatMessage], Field(min_length=1, max_length=limits.max_messages))
    model: type[ChatCompletionRequest] = create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        max_tokens=bounded,
        max_completion_tokens=bounded,
        messages=messages,
    )
    return model


SQUARE_SIDES = (64, 128, 256, 512, 1024)


def image_request_model(limits: PublicLimits) -> type[ImageRequest]:
    """The request model with the square sizes this app serves, as an enum."""
    sizes = tuple(f"{side}x{side}" for side in SQUARE_SIDES if side <= limits.max_side)
    size: Any = (Literal[sizes] | None, None)  # type: ignore[valid-type]
    model: type[ImageRequest] = create_model(
        "ImageGenerationRequest", __base__=ImageRequest, size=size
    )
    return model


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
    ChatRequest = chat_request_model(settings.limits)
    ImageGenerationRequest = image_request_model(settings.limits)

    def metadata() -> tuple[tuple[str, str], ...]:
        return request_metadata(current_request_id())

    async def served_models() -> list[models_pb2.ModelInfo]:
        reply = await backend.current.models.ListModels(
            models_pb2.ListModelsRequest(), metadata=metadata(), timeout=timeouts.health
        )
        return [m for m in reply.models if m.name]

    async def require_model(name: str | None, modality: str) -> None:
        """As vLLM does: a model name that serves no such route is a 404, not ignored."""
        if name is None:
            return
        names = [m.name for m in await served_models() if m.modality == modality]
        if name not in names:
            raise BridgeError(
                404,
                "model_not_found",
                f"The model `{name}` does not exist here; {modality} models: {names}",
                param="model",
            )

    @router.get("/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m.name) for m in await served_models()])

    @router.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}},
    )
    async def chat_completions(body: ChatRequest) -> Any:  # type: ignore[valid-type]
        chat: ChatCompletionRequest = body
        await require_model(chat.model, "text")
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
        await until_end(call)
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
            await until_end(call)
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
        await require_model(body.model, "embedding")
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
    async def images(body: ImageGenerationRequest) -> ImageList:  # type: ignore[valid-type]
        request: ImageRequest = body
        await require_model(request.model, "image")
        fields: dict[str, Any] = {"prompt": request.prompt}
        if request.size:
            width, height = (int(v) for v in request.size.split("x"))
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
        await require_model(body.model, "audio")
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
