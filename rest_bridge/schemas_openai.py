"""The OpenAI-compatible API's request and response models (OpenAI's shapes, hand-written:
a foreign contract).

Requests are bounded per app by the server's limits (read from it at start), so the
OpenAPI document states what the server enforces: each `*_request_model` function
returns the base model with its bounds filled in. Responses have OpenAI's shape.
"""

# No `from __future__ import annotations`: create_model reads these annotations as objects.

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from genserve.bridge.schemas import MAX_SAFE_INTEGER, one_of
from genserve.contract.limits import (
    PIPER_VOICES,
    AudioBounds,
    EmbeddingLimits,
    ImageBounds,
    TextLimits,
)
from genserve.contract.spec import NOT_BLANK

OPENAI_MODEL = ConfigDict(extra="ignore")  # the SDK may send fields we do not use
OPENAI_MAX_TEMPERATURE = 2.0  # OpenAI's range; the server may allow more
MAX_CONTENT_PARTS = 16
SQUARE_SIDES = (64, 128, 256, 512, 1024, 2048)
# OpenAI's voice names, mapped per engine onto the voices it has (a voice name the
# server lists works too): Bark's presets one by one, and the installed piper voices in
# turn (the speech extra installs one, en_US-joe-medium: every name is that voice).
OPENAI_VOICES = ("alloy", "echo", "fable", "onyx", "nova", "shimmer")
VOICES_BY_ENGINE: dict[str, dict[str, str]] = {
    "bark": {name: f"v2/en_speaker_{i}" for i, name in enumerate(OPENAI_VOICES, start=1)},
    "piper": {name: PIPER_VOICES[i % len(PIPER_VOICES)] for i, name in enumerate(OPENAI_VOICES)},
}


def voice_for(engine: str, voice: str) -> str:
    """The server's voice for an OpenAI name, as the model's engine has it (an engine
    without voices of its own, an upstream, gets Bark's presets, as it always did)."""
    return VOICES_BY_ENGINE.get(engine, VOICES_BY_ENGINE["bark"]).get(voice, voice)


def _bounded_text(max_chars: int) -> Any:
    return Annotated[str, Field(max_length=max_chars, pattern=NOT_BLANK)]


def _list_of(item: Any) -> Any:
    """list[item] of a type built at run time (mypy checks no such annotation)."""
    return list[item]


# -- requests: the shapes (unbounded), then their bounded versions per app ------------------


class TextPart(BaseModel):
    model_config = OPENAI_MODEL
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = OPENAI_MODEL
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = OPENAI_MODEL
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None


class EmbeddingRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


class ImageRequest(BaseModel):
    model_config = OPENAI_MODEL
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1, le=1)
    size: str | None = None
    response_format: Literal["b64_json"] | None = Field(None, description="no URLs: b64_json")


# OpenAI's model names that mean "the server's default model" for their route (OpenAI
# has one Whisper); any other name is the server's to know (404 model_not_found if not).
DEFAULT_MODEL_NAMES = frozenset({"whisper-1"})


class SpeechRequest(BaseModel):
    model_config = OPENAI_MODEL
    model: str
    input: str
    voice: str | None = Field(None, description="unset: the model's default voice")
    response_format: Literal["wav"] | None = Field(None, description="WAV is what is served")
    speed: float | None = Field(None, description="speaking rate; unset: the voice's own (1)")


def chat_request_model(limits: TextLimits) -> type[ChatCompletionRequest]:
    text = _bounded_text(limits.max_prompt_chars)
    part: Any = create_model("TextPart", __base__=TextPart, text=(text, ...))
    parts: Any = Annotated[_list_of(part), Field(min_length=1, max_length=MAX_CONTENT_PARTS)]
    message: Any = create_model(
        "ChatCompletionMessage", __base__=ChatMessage, content=(text | parts, ...)
    )
    stop = Annotated[str, Field(min_length=1, max_length=limits.max_stop_sequence_chars)]
    # the bound goes on the list alone: on the union it would bound a single string's length
    stops = Annotated[list[stop], Field(max_length=limits.max_stop_sequences)]
    tokens: Any = (int | None, Field(None, ge=1, le=limits.max_new_tokens))
    high = min(OPENAI_MAX_TEMPERATURE, limits.max_temperature)
    model: type[ChatCompletionRequest] = create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        messages=(list[message], Field(min_length=1, max_length=limits.max_messages)),
        max_tokens=tokens,
        max_completion_tokens=tokens,
        temperature=(float | None, Field(None, ge=0, le=high, allow_inf_nan=False)),
        stop=(stop | stops | None, None),
    )
    return model


def embedding_request_model(limits: EmbeddingLimits) -> type[EmbeddingRequest]:
    text = _bounded_text(limits.max_text_chars)
    texts: Any = Annotated[_list_of(text), Field(min_length=1, max_length=limits.max_texts)]
    model: type[EmbeddingRequest] = create_model(
        "EmbeddingRequest", __base__=EmbeddingRequest, input=(text | texts, ...)
    )
    return model


def image_sizes(limits: ImageBounds) -> tuple[str, ...]:
    """The square sizes the server serves, as OpenAI names them."""
    sides = (
        side
        for side in SQUARE_SIDES
        if limits.min_side <= side <= limits.max_side and side * side <= limits.max_pixels
    )
    return tuple(f"{side}x{side}" for side in sides)


def image_request_model(limits: ImageBounds) -> type[ImageRequest]:
    model: type[ImageRequest] = create_model(
        "ImageGenerationRequest",
        __base__=ImageRequest,
        prompt=(_bounded_text(limits.max_prompt_chars), ...),
        size=(one_of(image_sizes(limits)) | None, None),
    )
    return model


def voices(limits: AudioBounds) -> tuple[str, ...]:
    """OpenAI's names for which the server has a voice (of some engine), then its voices."""
    presets = limits.voice_presets
    offered = {
        name for mapping in VOICES_BY_ENGINE.values() for name, v in mapping.items() if v in presets
    }
    return tuple(name for name in OPENAI_VOICES if name in offered) + presets


def speech_request_model(limits: AudioBounds) -> type[SpeechRequest]:
    voice: Any = (
        one_of(voices(limits)) | None,
        Field(None, description="unset: the model's default voice"),
    )
    model: type[SpeechRequest] = create_model(
        "SpeechRequest",
        __base__=SpeechRequest,
        input=(_bounded_text(limits.max_prompt_chars), ...),
        voice=voice,
        speed=(
            float | None,
            Field(
                None,
                ge=limits.min_speed,
                le=limits.max_speed,
                allow_inf_nan=False,
                description="speaking rate; unset: the voice's own (1)",
            ),
        ),
    )
    return model


# -- responses ------------------------------------------------------------------------------


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


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ImageItem(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageList(BaseModel):
    created: int
    data: list[ImageItem]


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(BaseModel):
    text: str
    usage: DurationUsage


class TranscriptionSegment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    temperature: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment]
    usage: DurationUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "genserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
