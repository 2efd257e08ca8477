"""The seed's HTTP routes (chapter 3), with their parameter names and defaults, plus the
full parameter set of each RPC; POST JSON versions take the same fields in a body."""

# No `from __future__ import annotations`: FastAPI reads these closures' annotations.

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from genserve.bridge import convert
from genserve.bridge.backend import request_metadata
from genserve.bridge.body_limit import VIDEO_PATH
from genserve.bridge.errors import ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.limits import ServerLimits
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.request_id import current_request_id
from genserve.bridge.schemas import Schemas
from genserve.bridge.settings import BridgeSettings
from genserve.bridge.streams import (
    SSE_EVENT_SCHEMA,
    ends_with,
    first_event,
    media_file_response,
    media_sse_response,
    sse_error,
    until_end,
)

SSE = "text/event-stream"


def media_responses(*media_types: str) -> dict[int | str, dict[str, Any]]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {
            "content": {
                **dict.fromkeys(media_types, binary),
                SSE: {
                    "schema": {"type": "string"},
                    "description": "with Accept: text/event-stream",
                },
            },
            "description": "the file, streamed as it is generated",
        },
    }


TEXT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            SSE: {"schema": SSE_EVENT_SCHEMA, "description": "with stream=true"},
        },
        "description": "the answer; or delta/final Server-Sent Events",
    },
}


def wants_events(request: Request) -> bool:
    return SSE in request.headers.get("accept", "")


def build_seed_router(
    backend: Any,
    schemas: Schemas,
    limits: ServerLimits,
    settings: BridgeSettings,
    metrics: BridgeMetrics,
) -> APIRouter:
    router = APIRouter(tags=["generate"], responses=documented_errors(ERROR_SCHEMA))
    timeouts = settings.timeouts
    max_image_bytes = limits.video.max_image_bytes

    stubs = backend.stubs

    async def text(params: BaseModel) -> Response:
        call = stubs().text.Generate(
            convert.text_request(params),
            metadata=request_metadata(current_request_id()),
            timeout=timeouts.text,
        )
        first = await first_event(call)
        if params.stream:  # type: ignore[attr-defined]
            return EventSourceResponse(text_events(call, first), ping=15)
        with ends_with(call):
            return PlainTextResponse(await whole_text(call, first))

    async def whole_text(call: Any, first: Any) -> str:
        pieces = []
        event = first
        while event.HasField("delta"):
            pieces.append(event.delta.text)
            event = await first_event(call)
        metrics.tokens.inc(event.final.usage.completion_tokens)
        await until_end(call)
        return "".join(pieces)

    async def text_events(call: Any, first: Any) -> AsyncIterator[dict[str, str]]:
        try:
            event = first
            while True:
                if event.HasField("delta"):
                    yield {"event": "delta", "data": json.dumps({"text": event.delta.text})}
                else:
                    final = event.final
                    metrics.tokens.inc(final.usage.completion_tokens)
                    data = convert.event_dict(final)
                    data["finish_reason"] = convert.finish_reason(final)
                    yield {"event": "final", "data": json.dumps(data)}
                    await until_end(call)
                    return
                event = await call.read()
        except grpc.aio.AioRpcError as error:
            yield sse_error(error)  # the 200 is sent already: the error is an event
        finally:
            call.cancel()

    async def media(call: Any, request: Request, attachment: bool = False) -> Response:
        if wants_events(request):
            return media_sse_response(call, await first_event(call))
        return await media_file_response(call, attachment)

    def media_call(stub_method: Any, pb_request: Any) -> Any:
        return stub_method(
            pb_request, metadata=request_metadata(current_request_id()), timeout=timeouts.media
        )

    TextQuery, TextBody = schemas.TextQuery, schemas.TextBody
    ImageQuery, ImageBody = schemas.ImageQuery, schemas.ImageBody
    AudioQuery, AudioBody = schemas.AudioQuery, schemas.AudioBody
    MeshQuery, MeshBody = schemas.MeshQuery, schemas.MeshBody
    VideoForm = schemas.VideoForm

    @router.get("/generate/text", response_class=PlainTextResponse, responses=TEXT_RESPONSES)
    async def generate_text(params: Annotated[TextQuery, Query()]) -> Response:  # type: ignore[valid-type]
        """Chat with the default text model, or the one `model` names (the seed's
        `GET /generate/text?prompt=...`)."""
        return await text(params)

    @router.post("/generate/text", response_class=PlainTextResponse, responses=TEXT_RESPONSES)
    async def generate_text_json(params: TextBody) -> Response:  # type: ignore[valid-type]
        """The same, with a JSON body for long prompts."""
        return await text(params)

    @router.get(
        "/generate/image",
        response_class=Response,
        responses=media_responses("image/png", "image/jpeg", "image/webp"),
    )
    async def generate_image(request: Request, params: Annotated[ImageQuery, Query()]) -> Response:  # type: ignore[valid-type]
        """Text-to-image (the seed's `GET /generate/image?prompt=...`): PNG by default."""
        return await media(
            media_call(stubs().image.Generate, convert.image_request(params)), request
        )

    @router.post(
        "/generate/image",
        response_class=Response,
        responses=media_responses("image/png", "image/jpeg", "image/webp"),
    )
    async def generate_image_json(request: Request, params: ImageBody) -> Response:  # type: ignore[valid-type]
        return await media(
            media_call(stubs().image.Generate, convert.image_request(params)), request
        )

    @router.get("/generate/audio", response_class=Response, responses=media_responses("audio/wav"))
    async def generate_audio(request: Request, params: Annotated[AudioQuery, Query()]) -> Response:  # type: ignore[valid-type]
        """Text-to-audio (the seed's `GET /generate/audio?prompt=...&preset=...`): WAV."""
        return await media(
            media_call(stubs().audio.Generate, convert.audio_request(params)), request
        )

    @router.post("/generate/audio", response_class=Response, responses=media_responses("audio/wav"))
    async def generate_audio_json(request: Request, params: AudioBody) -> Response:  # type: ignore[valid-type]
        return await media(
            media_call(stubs().audio.Generate, convert.audio_request(params)), request
        )

    @router.get(
        "/generate/3d", response_class=Response, responses=media_responses("model/obj", "model/ply")
    )
    async def generate_3d(request: Request, params: Annotated[MeshQuery, Query()]) -> Response:  # type: ignore[valid-type]
        """Text-to-3D (the seed's `GET /generate/3d?prompt=...&num_inference_steps=25`):
        an OBJ with vertex colours, as an attachment."""
        call = media_call(stubs().mesh.Generate, convert.mesh_request(params))
        return await media(call, request, attachment=True)

    @router.post(
        "/generate/3d", response_class=Response, responses=media_responses("model/obj", "model/ply")
    )
    async def generate_3d_json(request: Request, params: MeshBody) -> Response:  # type: ignore[valid-type]
        call = media_call(stubs().mesh.Generate, convert.mesh_request(params))
        return await media(call, request, attachment=True)

    @router.post(VIDEO_PATH, response_class=Response, responses=media_responses("video/mp4"))
    async def generate_video(
        request: Request,
        image: Annotated[UploadFile, File(description="PNG, JPEG or WebP")],
        params: Annotated[VideoForm, Form()],  # type: ignore[valid-type]
    ) -> Response:
        """Image-to-video (the seed's `POST /generate/video`, multipart `image` and
        `num_frames`): a fragmented H.264 MP4 that plays while it streams."""
        data = await image.read(max_image_bytes + 1)  # no more than the server would take
        if len(data) > max_image_bytes:
            raise BridgeError(
                422, "INVALID_ARGUMENT", f"image: larger than the limit of {max_image_bytes} bytes"
            )
        call = media_call(stubs().video.Generate, convert.video_request(params, data))
        return await media(call, request)

    return router
