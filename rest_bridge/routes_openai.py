"""An OpenAI-compatible API on the same app, so the official `openai` SDK works unchanged:
chat completions (plain and streamed), embeddings, image generation, speech and
transcription. Hand-written: OpenAI's shapes are a foreign contract, not the specs'.

Each route passes its `model` to the server, which serves that model by name; a name the
server does not know for the route's modality is OpenAI's 404 `model_not_found`. OpenAI's
own name for the one model of a kind ("whisper-1") means the server's default.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import grpc
import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from genserve.bridge.backend import BackendHolder, current_metadata
from genserve.bridge.errors import OPENAI_ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.limits import ServerLimits
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.openai_chat import ChatChunks, chat_completion, chat_request_pb
from genserve.bridge.reannotated import Reannotated
from genserve.bridge.request_id import current_request_id
from genserve.bridge.schemas_openai import (
    DEFAULT_MODEL_NAMES,
    OPENAI_VOICES,
    ChatCompletion,
    ChatCompletionRequest,
    DurationUsage,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingRequest,
    ImageItem,
    ImageList,
    ImageRequest,
    ModelCard,
    ModelList,
    SpeechRequest,
    Transcription,
    TranscriptionSegment,
    TranscriptionVerbose,
    Usage,
    chat_request_model,
    embedding_request_model,
    image_request_model,
    speech_request_model,
    voice_for,
)
from genserve.bridge.settings import Timeouts
from genserve.bridge.streams import (
    SSE_EVENT_SCHEMA,
    TextAnswer,
    TextRelay,
    ends_with,
    media_file_response,
    next_event,
)
from genserve.bridge.uploads import read_upload
from genserve.contract import ModalitySpec
from genserve.contract.modalities.audio import AUDIO
from genserve.contract.modalities.embedding import EMBEDDING
from genserve.contract.modalities.image import IMAGE
from genserve.contract.modalities.text import TEXT
from genserve.contract.modalities.transcription import TRANSCRIPTION
from genserve.v1 import audio_pb2, embedding_pb2, image_pb2, models_pb2

PREFIX = "/v1"
TRANSCRIPTIONS_PATH = f"{PREFIX}/audio/transcriptions"
# Routes of this API that take a spec's upload, for the body limits (body_limit.py).
UPLOAD_ROUTES: dict[str, ModalitySpec[Any, Any]] = {TRANSCRIPTIONS_PATH: TRANSCRIPTION}
TranscriptionFormat = Literal["json", "text", "verbose_json"]

SSE_ANSWER = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}}
WAV_ANSWER = {200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}}}
TRANSCRIPTION_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        Transcription.model_json_schema(),
                        TranscriptionVerbose.model_json_schema(),
                    ]
                }
            },
            "text/plain": {"schema": {"type": "string"}},
        },
        "description": "json: the text; verbose_json: with segments; text: plain text",
    }
}


def speech_request_pb(body: SpeechRequest, engine: str) -> audio_pb2.AudioGenerateRequest:
    """`engine`: the model's, whose voice an OpenAI voice name stands for."""
    request = audio_pb2.AudioGenerateRequest(prompt=body.input, model=body.model)
    if body.voice is not None:  # unset: the model's manifest default, on the server
        request.preset = voice_for(engine, body.voice)
    if body.speed is not None:
        request.speed = body.speed
    return request


def server_model(name: str) -> str | None:
    """The model to ask the server for; None: its default."""
    return None if name in DEFAULT_MODEL_NAMES else name


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


def transcription_answer(
    answer: TextAnswer, response_format: TranscriptionFormat, temperature: float | None
) -> Response:
    text = answer.text
    usage = DurationUsage(seconds=answer.final.duration_s)
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "json":
        return JSONResponse(Transcription(text=text, usage=usage).model_dump())
    segments = [
        TranscriptionSegment(
            id=index, start=s.start_s, end=s.end_s, text=s.text, temperature=temperature or 0.0
        )
        for index, s in enumerate(answer.pieces)
    ]
    verbose = TranscriptionVerbose(
        language=answer.final.language,
        duration=answer.final.duration_s,
        text=text,
        segments=segments,
        usage=usage,
    )
    return JSONResponse(verbose.model_dump())


def build_openai_router(
    backend: BackendHolder, limits: ServerLimits, timeouts: Timeouts, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(
        prefix=PREFIX,
        tags=["openai"],
        responses={
            **documented_errors(OPENAI_ERROR_SCHEMA),
            404: {
                "description": "no model of that name serves this route (see /v1/models)",
                "content": {"application/json": {"schema": OPENAI_ERROR_SCHEMA}},
            },
        },
    )
    OpenAIRoutes(backend, limits, timeouts, metrics).add_to(router)
    return router


class OpenAIRoutes:
    def __init__(
        self,
        backend: BackendHolder,
        limits: ServerLimits,
        timeouts: Timeouts,
        metrics: BridgeMetrics,
    ) -> None:
        self._backend = backend
        self._limits = limits
        self._timeouts = timeouts
        self._chat = TextRelay(TEXT, metrics)
        self._transcript = TextRelay(TRANSCRIPTION, metrics)
        self._audio_engines: dict[str, str] = {}  # audio model name -> its engine kind

    def add_to(self, router: APIRouter) -> None:
        limits = self._limits

        def post(path: str, handler: Any, **route: Any) -> None:
            router.add_api_route(path, handler, methods=["POST"], **route)

        router.add_api_route("/models", self.list_models, methods=["GET"], response_model=ModelList)
        chat = Reannotated(self.chat_completions, body=chat_request_model(limits.of(TEXT)))
        post("/chat/completions", chat, response_model=ChatCompletion, responses=SSE_ANSWER)
        embed = Reannotated(self.embeddings, body=embedding_request_model(limits.of(EMBEDDING)))
        post("/embeddings", embed, response_model=EmbeddingList)
        images = Reannotated(self.images, body=image_request_model(limits.of(IMAGE)))
        post("/images/generations", images, response_model=ImageList)
        speech = Reannotated(self.speech, body=speech_request_model(limits.of(AUDIO)))
        post("/audio/speech", speech, response_class=Response, responses=WAV_ANSWER)
        max_prompt = limits.of(TRANSCRIPTION).max_prompt_chars
        prompt = Annotated[str | None, Form(max_length=max_prompt, description="words to expect")]
        transcribe = Reannotated(self.transcriptions, prompt=prompt)
        path = TRANSCRIPTIONS_PATH.removeprefix(PREFIX)
        post(path, transcribe, response_class=Response, responses=TRANSCRIPTION_ANSWER)

    def _call(self, spec: ModalitySpec[Any, Any]) -> Any:
        return self._backend.stubs().call(spec)

    async def list_models(self) -> ModelList:
        """Every model the server knows, of every modality."""
        reply = await self._backend.stubs().models.ListModels(
            models_pb2.ListModelsRequest(),
            metadata=current_metadata(),
            timeout=self._timeouts.health,
        )
        return ModelList(data=[ModelCard(id=m.name) for m in reply.models])

    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        call = self._call(TEXT)(
            chat_request_pb(body),
            metadata=current_metadata(),
            timeout=self._timeouts.for_spec(TEXT),
        )
        with unknown_model_is_model_not_found():
            first = await next_event(call)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = ChatChunks(
            f"chatcmpl-{current_request_id()}", int(time.time()), body.model, include_usage
        )
        if body.stream:
            return self._chat.sse(call, first, chunks)
        return chat_completion(await self._chat.fold(call, first), chunks)

    async def embeddings(self, body: EmbeddingRequest) -> EmbeddingList:
        texts = [body.input] if isinstance(body.input, str) else body.input
        with unknown_model_is_model_not_found():
            reply = await self._call(EMBEDDING)(
                embedding_pb2.EmbedRequest(texts=texts, model=body.model),
                metadata=current_metadata(),
                timeout=self._timeouts.for_spec(EMBEDDING),
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

    async def images(self, body: ImageRequest) -> ImageList:
        fields: dict[str, Any] = {"prompt": body.prompt}
        if body.model is not None:  # unset: the server's default image model
            fields["model"] = body.model
        if body.size:
            width, height = (int(v) for v in body.size.split("x"))
            fields.update(width=width, height=height)
        call = self._call(IMAGE)(
            image_pb2.ImageGenerateRequest(**fields),
            metadata=current_metadata(),
            timeout=self._timeouts.for_spec(IMAGE),
        )
        png = bytearray()
        with ends_with(call), unknown_model_is_model_not_found():
            async for event in call:
                if event.HasField("chunk"):
                    png += event.chunk.data
        return ImageList(
            created=int(time.time()), data=[ImageItem(b64_json=base64.b64encode(png).decode())]
        )

    async def audio_engine(self, model: str) -> str:
        """The engine of a model ("": the default's), from ListModels, once per name:
        what an OpenAI voice name maps onto. "" for a name the server does not list (it
        answers 404)."""
        if model not in self._audio_engines:
            reply = await self._backend.stubs().models.ListModels(
                models_pb2.ListModelsRequest(),
                metadata=current_metadata(),
                timeout=self._timeouts.health,
            )
            for info in reply.models:
                if info.modality == AUDIO.name:
                    self._audio_engines[info.name] = info.engine
                    if info.is_default:
                        self._audio_engines[""] = info.engine
            if model not in self._audio_engines:
                return ""
        return self._audio_engines[model]

    async def speech(self, body: SpeechRequest) -> Response:
        """Text to speech: the WAV streams as the server speaks it."""
        engine = await self.audio_engine(body.model) if body.voice in OPENAI_VOICES else ""
        call = self._call(AUDIO)(
            speech_request_pb(body, engine),
            metadata=current_metadata(),
            timeout=self._timeouts.for_spec(AUDIO),
        )
        with unknown_model_is_model_not_found():
            return await media_file_response(call, attachment=False)

    async def transcriptions(
        self,
        file: Annotated[UploadFile, File(description="WAV, FLAC, MP3 or OGG")],
        model: Annotated[str, Form(min_length=1, description='"whisper-1": the default')],
        language: Annotated[str | None, Form(description='ISO 639-1, e.g. "en"')] = None,
        prompt: str | None = None,  # a Form bounded by the server's limit (add_to)
        temperature: Annotated[float | None, Form(ge=0, le=1, allow_inf_nan=False)] = None,
        response_format: Annotated[TranscriptionFormat, Form()] = "json",
    ) -> Response:
        """Speech to text (the server's Whisper), as OpenAI's SDK asks for it."""
        audio = await read_upload(file, "file", self._limits.upload_bytes(TRANSCRIPTION))
        request = TRANSCRIPTION.fields_to_request(
            {
                "audio": audio,
                "language": language,
                "initial_prompt": prompt,
                "temperature": temperature,
                "model": server_model(model),
            }
        )
        call = self._call(TRANSCRIPTION)(
            request, metadata=current_metadata(), timeout=self._timeouts.for_spec(TRANSCRIPTION)
        )
        with unknown_model_is_model_not_found():
            first = await next_event(call)
        answer = await self._transcript.fold(call, first)
        return transcription_answer(answer, response_format, temperature)
