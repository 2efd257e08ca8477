"""OpenAI's Videos API (`/v1/videos`) on the server's jobs, so the `openai` SDK's
`client.videos` works unchanged: create, retrieve, download_content, delete, list.

The video modality is image-to-video: `input_reference` (a file in multipart, or base64 /
a data: URL / {"image_url": data URL} in JSON) is its image, and a prompt is not used.
`size` ("WxH") is its width and height; `seconds` its num_frames at its fps (the
request's, else the contract's default). The modality's own fields (num_frames, fps,
num_inference_steps, seed...) are taken too. OpenAI's model names (sora-2...) mean the
server's default video model; any other names a server model.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

import contextlib
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from genserve.bridge.backend import BackendHolder
from genserve.bridge.errors import OPENAI_ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.job_calls import JobCalls, state_of
from genserve.bridge.job_content import content_response
from genserve.bridge.job_submit import MAX_KEY_CHARS, JobParams, invalid, submit_request
from genserve.bridge.limits import ServerLimits
from genserve.bridge.routes_jobs import FILE_ANSWER, MAX_PAGE_SIZE
from genserve.bridge.uploads import read_upload
from genserve.contract import ModalitySpec
from genserve.contract.modalities.video import VIDEO, VideoParams
from genserve.v1 import jobs_pb2

PREFIX = "/v1/videos"
# The body cap of the multipart create: the video modality's image upload.
VIDEO_UPLOAD_ROUTES: dict[str, ModalitySpec[Any, Any]] = {PREFIX: VIDEO}
OPENAI_VIDEO_MODELS = frozenset({"sora-2", "sora-2-pro"})
REFERENCE = "input_reference"
DEFAULT_FPS = float(VideoParams.model_fields["fps"].default)
STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed"}
UNFINISHED_ERRORS = {
    "cancelled": "the video job was cancelled",
    "expired": "the video's file expired and was deleted",
}
CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        REFERENCE: {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "prompt": {"type": "string", "description": "not used"},
                        "seconds": {"type": "string"},
                        "size": {"type": "string", "description": "WIDTHxHEIGHT"},
                    },
                    "required": [REFERENCE],
                }
            },
        },
        "required": True,
    }
}


def progress_percent(job: jobs_pb2.Job) -> int:
    if state_of(job) == "succeeded":
        return 100
    if not job.HasField("progress") or job.progress.total_steps == 0:
        return 0
    return min(99, 100 * job.progress.step // job.progress.total_steps)


def video_error(job: jobs_pb2.Job) -> dict[str, str] | None:
    state = state_of(job)
    if job.HasField("error"):
        return {"code": job.error.code.lower(), "message": job.error.message}
    if state in UNFINISHED_ERRORS:
        return {"code": state, "message": UNFINISHED_ERRORS[state]}
    return None


def video_dict(job: jobs_pb2.Job) -> dict[str, Any]:
    """OpenAI's Video object."""
    header = job.header if job.HasField("header") else None
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": STATUS.get(state_of(job), "failed"),
        "progress": progress_percent(job),
        "created_at": int(job.created_at),
        "completed_at": int(job.finished_at) or None,
        "expires_at": int(job.expires_at) or None,
        "seconds": f"{header.duration_s:g}" if header is not None else None,
        "size": f"{header.width}x{header.height}" if header is not None else None,
        "prompt": None,
        "remixed_from_video_id": None,
        "error": video_error(job),
    }


def modality_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's fields as the video modality's: model, size, seconds; prompt dropped."""
    out = {k: v for k, v in fields.items() if k not in ("prompt", "seconds", "size", REFERENCE)}
    if out.get("model") in OPENAI_VIDEO_MODELS:
        del out["model"]
    if (size := fields.get("size")) is not None:
        width, _, height = str(size).lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise invalid(("size",), f"expected WIDTHxHEIGHT, got {size!r}")
        out |= {"width": int(width), "height": int(height)}
    if (seconds := fields.get("seconds")) is not None:
        if "num_frames" in fields:
            raise invalid(("seconds",), "give seconds or num_frames, not both")
        try:
            duration = float(seconds)
        except (TypeError, ValueError):
            duration = math.nan
        if not duration > 0 or math.isinf(duration):
            raise invalid(("seconds",), f"expected a positive number, got {seconds!r}")
        fps = out.setdefault("fps", DEFAULT_FPS)
        with contextlib.suppress(TypeError, ValueError):  # a bad fps: its schema names it
            out["num_frames"] = math.ceil(duration * float(fps))
    return out


def reference_from_json(value: object) -> object:
    """base64, a data: URL, or OpenAI's {"image_url": data URL}."""
    if isinstance(value, dict):
        if "image_url" not in value:
            problem = "expected an image_url (a data: URL); file_id is not served"
            raise invalid((REFERENCE,), problem)
        return value["image_url"]
    return value


def build_videos_router(backend: BackendHolder, limits: ServerLimits) -> APIRouter:
    router = APIRouter(
        prefix=PREFIX, tags=["openai"], responses=documented_errors(OPENAI_ERROR_SCHEMA)
    )
    VideoRoutes(JobCalls(backend), JobParams(VIDEO, limits)).add_to(router)
    return router


class VideoRoutes:
    def __init__(self, calls: JobCalls, params: JobParams) -> None:
        self._calls = calls
        self._params = params

    def add_to(self, router: APIRouter) -> None:
        router.add_api_route("", self.create, methods=["POST"], openapi_extra=CREATE_BODY)
        router.add_api_route("", self.list, methods=["GET"])
        router.add_api_route("/{video_id}", self.retrieve, methods=["GET"])
        router.add_api_route("/{video_id}", self.delete, methods=["DELETE"])
        router.add_api_route(
            "/{video_id}/content",
            self.content,
            methods=["GET"],
            response_class=Response,
            responses=FILE_ANSWER,
        )

    async def create(
        self,
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=MAX_KEY_CHARS)] = None,
    ) -> dict[str, Any]:
        """Create a video job: multipart with the image as `input_reference`; JSON is taken
        too, the image as base64, a data: URL or {"image_url": data URL}."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            pb = await self._from_form(request)
        else:
            pb = await self._from_json(request)
        job = await self._calls.submit(submit_request(VIDEO, pb, idempotency_key))
        return video_dict(job)

    async def _from_form(self, request: Request) -> Any:
        form = await request.form()
        file = form.get(REFERENCE)
        if not isinstance(file, UploadFile):
            raise invalid((REFERENCE,), "is required (an image file)")
        # a form holds Starlette's UploadFile, which FastAPI's only annotates
        upload = await read_upload(cast(Any, file), REFERENCE, self._params.upload_bytes)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return self._params.from_form(modality_fields(fields), upload)

    async def _from_json(self, request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise invalid((), "expected a JSON object or a multipart form") from None
        if not isinstance(body, dict):
            raise invalid((), "expected a JSON object")
        if body.get(REFERENCE) is None:
            raise invalid((REFERENCE,), "is required (an image: base64 or a data: URL)")
        fields = modality_fields(body)
        assert VIDEO.upload is not None
        fields[VIDEO.upload.field] = reference_from_json(body[REFERENCE])
        return self._params.from_json(fields)

    async def _video(self, video_id: str) -> jobs_pb2.Job:
        job = await self._calls.get(video_id)
        if job.modality != VIDEO.name:
            raise BridgeError(404, "NOT_FOUND", f"no video {video_id!r}", param="video_id")
        return job

    async def retrieve(self, video_id: str) -> dict[str, Any]:
        return video_dict(await self._video(video_id))

    async def delete(self, video_id: str) -> dict[str, Any]:
        await self._video(video_id)
        deleted = await self._calls.delete(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": deleted}

    async def content(
        self,
        request: Request,
        video_id: str,
        variant: Literal["video"] = "video",
    ) -> Response:
        """The MP4, with byte ranges (a `<video>` seeks in it)."""
        return await content_response(request, self._calls, await self._video(video_id))

    async def list(
        self,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        after: str | None = None,
        order: Literal["desc"] = "desc",
    ) -> dict[str, Any]:
        """The caller's videos, newest first, after the video `after`."""
        found: list[jobs_pb2.Job] = []
        passed = after is None
        token = ""
        while len(found) <= limit:
            reply = await self._calls.list(MAX_PAGE_SIZE, token)
            for job in reply.jobs:
                if not passed:
                    passed = job.id == after
                elif job.modality == VIDEO.name:
                    found.append(job)
            token = reply.next_page_token
            if not token:
                break
        data = [video_dict(job) for job in found[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(found) > limit,
        }
