"""Request models, built from the bridge's configured limits so that the OpenAPI document
states the bounds the bridge enforces.

Bodies are strict (JSON `"5"` is not an integer, `1` is not a boolean); query strings
and forms are text by nature and are parsed, then bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rest_bridge.settings import PublicLimits

INT64 = 2**63 - 1
Seed = Annotated[int | None, Field(None, ge=-INT64 - 1, le=INT64, description="unset: random")]
STRICT = ConfigDict(extra="forbid", strict=True)
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


def build_schemas(limits: PublicLimits) -> Schemas:
    prompt = Annotated[str, Field(min_length=1, max_length=limits.max_prompt_chars)]
    side = Annotated[int | None, Field(None, ge=64, le=limits.max_side, multiple_of=8)]
    guidance = Annotated[float | None, Field(None, ge=0, le=50, allow_inf_nan=False)]

    class TextParams(BaseModel):
        prompt: prompt
        system_prompt: str | None = Field(
            None, max_length=limits.max_prompt_chars, description="unset: the FastAPI bot prompt"
        )
        max_new_tokens: int | None = Field(None, ge=1, le=limits.max_new_tokens)
        temperature: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
        top_k: int | None = Field(None, ge=0, le=1000)
        top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
        do_sample: bool | None = None
        seed: Seed = None
        stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
            default_factory=list, max_length=4
        )
        stream: bool = Field(False, description="true: Server-Sent Events, one per delta")

    class ImageParams(BaseModel):
        prompt: prompt
        negative_prompt: str = Field("", max_length=limits.max_prompt_chars)
        num_inference_steps: int | None = Field(None, ge=1, le=limits.max_image_steps)
        guidance_scale: guidance = None
        width: side = None
        height: side = None
        seed: Seed = None
        format: Literal["png", "jpeg", "webp"] = "png"

    class AudioParams(BaseModel):
        prompt: Annotated[str, Field(min_length=1, max_length=500)]
        preset: str = Field("v2/en_speaker_1", pattern=r"^v2/en_speaker_[0-9]$")
        seed: Seed = None

    class MeshParams(BaseModel):
        prompt: prompt
        guidance_scale: guidance = None
        num_inference_steps: int | None = Field(None, ge=1, le=limits.max_mesh_steps)
        seed: Seed = None
        format: Literal["obj", "ply"] = "obj"

    class VideoForm(BaseModel):
        model_config = LAX
        num_frames: int | None = Field(None, ge=1, le=limits.max_video_frames)
        fps: float | None = Field(None, ge=1, le=60, allow_inf_nan=False)
        decode_chunk_size: int | None = Field(None, ge=1, le=limits.max_video_frames)
        motion_bucket_id: int | None = Field(None, ge=0, le=1023)
        noise_aug_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
        num_inference_steps: int | None = Field(None, ge=1, le=limits.max_image_steps)
        width: side = None
        height: side = None
        seed: Seed = None

    def pair(params: type[BaseModel], name: str) -> tuple[type[BaseModel], type[BaseModel]]:
        query: Any = type(f"{name}Query", (params,), {"model_config": LAX})
        body: Any = type(f"{name}Body", (params,), {"model_config": STRICT})
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
