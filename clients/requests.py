"""Keyword arguments to protobuf requests: one place for the sync and async clients."""

from __future__ import annotations

from typing import Any

from genserve.v1 import (
    audio_pb2,
    embedding_pb2,
    image_pb2,
    mesh_pb2,
    text_pb2,
    video_pb2,
)

IMAGE_FORMATS = {
    "png": image_pb2.IMAGE_FORMAT_PNG,
    "jpeg": image_pb2.IMAGE_FORMAT_JPEG,
    "webp": image_pb2.IMAGE_FORMAT_WEBP,
}
MESH_FORMATS = {"obj": mesh_pb2.MESH_FORMAT_OBJ, "ply": mesh_pb2.MESH_FORMAT_PLY}
FINISH_REASONS = {
    text_pb2.FINISH_REASON_STOP: "stop",
    text_pb2.FINISH_REASON_LENGTH: "length",
    text_pb2.FINISH_REASON_CANCELLED: "cancelled",
}


def _given(**fields: Any) -> dict[str, Any]:
    """Unset (None) arguments stay unset, so the server applies its defaults."""
    return {k: v for k, v in fields.items() if v is not None}


def text_request(
    prompt: str | None = None,
    *,
    messages: list[dict[str, str]] | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
    model: str | None = None,
) -> text_pb2.TextGenerateRequest:
    return text_pb2.TextGenerateRequest(
        prompt=prompt or "",
        messages=[
            text_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages or []
        ],
        stop=stop or [],
        **_given(
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            do_sample=do_sample,
            seed=seed,
            model=model,
        ),
    )


def image_request(
    prompt: str,
    *,
    negative_prompt: str = "",
    steps: int | None = None,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
    format: str = "png",
    model: str | None = None,
) -> image_pb2.ImageGenerateRequest:
    return image_pb2.ImageGenerateRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        format=IMAGE_FORMATS[format],
        **_given(
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            seed=seed,
            model=model,
        ),
    )


def audio_request(
    prompt: str, *, preset: str | None = None, seed: int | None = None, model: str | None = None
) -> audio_pb2.AudioGenerateRequest:
    return audio_pb2.AudioGenerateRequest(
        prompt=prompt, **_given(preset=preset, seed=seed, model=model)
    )


def video_request(
    image: bytes,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    steps: int | None = None,
    decode_chunk_size: int | None = None,
    motion_bucket_id: int | None = None,
    noise_aug_strength: float | None = None,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
    model: str | None = None,
) -> video_pb2.VideoGenerateRequest:
    return video_pb2.VideoGenerateRequest(
        image=image,
        **_given(
            num_frames=num_frames,
            fps=fps,
            num_inference_steps=steps,
            decode_chunk_size=decode_chunk_size,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            width=width,
            height=height,
            seed=seed,
            model=model,
        ),
    )


def mesh_request(
    prompt: str,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    format: str = "obj",
    model: str | None = None,
) -> mesh_pb2.MeshGenerateRequest:
    return mesh_pb2.MeshGenerateRequest(
        prompt=prompt,
        format=MESH_FORMATS[format],
        **_given(num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed, model=model),
    )


def embed_request(texts: list[str], *, model: str | None = None) -> embedding_pb2.EmbedRequest:
    return embedding_pb2.EmbedRequest(texts=texts, **_given(model=model))
