"""Request models, built from the server's limits (read from it at start) so that the
OpenAPI document states the bounds the server enforces.

JSON bodies take exactly their JSON types (`"5"` is not an integer, `1` is not a
boolean); query strings and forms are text by nature and are parsed, then bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genserve.bridge.limits import ImageBounds, ServerLimits, VideoBounds

# Seeds stay within what a JSON number holds exactly (JavaScript's safe integers).
MAX_SAFE_INTEGER = 2**53 - 1
NOT_BLANK = r"\S"  # the server refuses empty and all-whitespace prompts


class JsonBody(BaseModel):
    """A JSON body that takes what its JSON schema says and no more: a number field does
    not take a string ("5"), a boolean does not take 1. (Pydantic's strict mode goes
    further and refuses 5.0 for an integer, which JSON Schema calls an integer.)"""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_coercion_from_json_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if value is None:
                continue
            accepted = _json_types(field.annotation)
            if isinstance(value, str) and str not in accepted:
                raise ValueError(f"{name}: expected a JSON {_describe(accepted)}, got a string")
            if bool in accepted and str not in accepted and not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false")
        return data


def _json_types(annotation: Any) -> set[Any]:
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _json_types(args[0])
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    if args and get_origin(annotation) in (Union, UnionType):
        return set().union(*(_json_types(a) for a in args))
    return {get_origin(annotation) or annotation}


def _describe(types: set[Any]) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array"}
    return " or ".join(sorted({names.get(t, "value") for t in types if t is not type(None)}))


Seed = Annotated[
    int | None,
    Field(None, ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER, description="unset: random"),
]
LAX = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Schemas:
    TextQuery: type[BaseModel]
    TextBody: type[BaseModel]
    ImageQuery: type[BaseModel]
    ImageBody: type[BaseModel]
    AudioQuery: type[BaseModel]
    AudioBody: type[BaseModel]
    MeshQuery: type[BaseModel]
    MeshBody: type[BaseModel]
    VideoForm: type[BaseModel]


def one_of(values: tuple[str, ...]) -> Any:
    """An enum of the given strings (any string when there are none to list)."""
    return Literal[values] if values else str


def model_field() -> Any:
    return Field(None, description="a model name (GET /models); unset: the modality's default")


def build_schemas(limits: ServerLimits) -> Schemas:
    text, image, audio = limits.text, limits.image, limits.audio
    video, mesh = limits.video, limits.mesh
    prompt = Annotated[
        str,
        Field(
            max_length=text.max_prompt_chars,
            pattern=NOT_BLANK,
            description=f"with the system prompt, at most {text.max_prompt_chars} characters",
        ),
    ]
    stop_sequence = Annotated[str, Field(min_length=1, max_length=text.max_stop_sequence_chars)]
    voice_preset = one_of(audio.voice_presets)

    def prompt_field(max_chars: int) -> Any:
        return Field(max_length=max_chars, pattern=NOT_BLANK)

    def side(bounds: ImageBounds | VideoBounds) -> Any:
        return Field(
            None,
            ge=bounds.min_side,
            le=bounds.max_side,
            multiple_of=8,
            description=f"width x height at most {bounds.max_pixels} pixels",
        )

    def guidance(high: float) -> Any:
        return Field(None, ge=0, le=high, allow_inf_nan=False)

    image_prompt = Annotated[str, prompt_field(image.max_prompt_chars)]
    audio_prompt = Annotated[str, prompt_field(audio.max_prompt_chars)]
    mesh_prompt = Annotated[str, prompt_field(mesh.max_prompt_chars)]
    image_side = Annotated[int | None, side(image)]
    video_side = Annotated[int | None, side(video)]

    class TextParams(BaseModel):
        prompt: prompt
        system_prompt: str | None = Field(
            None, max_length=text.max_prompt_chars, description="unset: the FastAPI bot prompt"
        )
        max_new_tokens: int | None = Field(None, ge=1, le=text.max_new_tokens)
        temperature: float | None = Field(None, ge=0, le=text.max_temperature, allow_inf_nan=False)
        top_k: int | None = Field(None, ge=0, le=text.max_top_k)
        top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
        do_sample: bool | None = None
        seed: Seed = None
        stop: list[stop_sequence] = Field(default_factory=list, max_length=text.max_stop_sequences)
        stream: bool = Field(False, description="true: Server-Sent Events, one per delta")
        model: str | None = model_field()

    class ImageParams(BaseModel):
        prompt: image_prompt
        negative_prompt: str = Field("", max_length=image.max_prompt_chars)
        num_inference_steps: int | None = Field(None, ge=1, le=image.max_steps)
        guidance_scale: float | None = guidance(image.max_guidance_scale)
        width: image_side = None
        height: image_side = None
        seed: Seed = None
        format: Literal["png", "jpeg", "webp"] = "png"
        model: str | None = model_field()

    class AudioParams(BaseModel):
        prompt: audio_prompt
        # unset stays unset: the model's manifest default applies on the server
        preset: voice_preset | None = Field(  # type: ignore[valid-type]
            None, description="unset: the model's default voice"
        )
        seed: Seed = None
        model: str | None = model_field()

    class MeshParams(BaseModel):
        prompt: mesh_prompt
        guidance_scale: float | None = guidance(mesh.max_guidance_scale)
        num_inference_steps: int | None = Field(None, ge=1, le=mesh.max_steps)
        seed: Seed = None
        format: Literal["obj", "ply"] = "obj"
        model: str | None = model_field()

    class VideoForm(BaseModel):
        model_config = ConfigDict(extra="ignore")  # the form also carries the image file
        num_frames: int | None = Field(None, ge=1, le=video.max_frames)
        fps: float | None = Field(None, ge=1, le=video.max_fps, allow_inf_nan=False)
        decode_chunk_size: int | None = Field(None, ge=1, le=video.max_frames)
        motion_bucket_id: int | None = Field(None, ge=0, le=1023)
        noise_aug_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
        num_inference_steps: int | None = Field(None, ge=1, le=video.max_steps)
        width: video_side = None
        height: video_side = None
        seed: Seed = None
        model: str | None = model_field()

    def pair(params: type[BaseModel], name: str) -> tuple[type[BaseModel], type[BaseModel]]:
        query: Any = type(f"{name}Query", (params,), {"model_config": LAX})
        body: Any = type(f"{name}Body", (JsonBody, params), {})
        return query, body

    text_query, text_body = pair(TextParams, "Text")
    image_query, image_body = pair(ImageParams, "Image")
    audio_query, audio_body = pair(AudioParams, "Audio")
    mesh_query, mesh_body = pair(MeshParams, "Mesh")
    return Schemas(
        TextQuery=text_query,
        TextBody=text_body,
        ImageQuery=image_query,
        ImageBody=image_body,
        AudioQuery=audio_query,
        AudioBody=audio_body,
        MeshQuery=mesh_query,
        MeshBody=mesh_body,
        VideoForm=VideoForm,
    )
