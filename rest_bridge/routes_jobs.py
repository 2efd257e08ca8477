"""JobService over HTTP: long media as jobs, submitted once, run whether or not anyone is
connected, then watched (Server-Sent Events, resumable) or downloaded (byte ranges).

- POST /v1/jobs {"modality", "params", "idempotency_key"?, "ttl_s"?}: the params are the
  modality's seed-route fields (video's image as base64); 202 with the job and its
  Location, or 200 with the job an idempotency key already made.
- GET /v1/jobs (newest first, paged), GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel,
  DELETE /v1/jobs/{id}.
- GET /v1/jobs/{id}/events: SSE (see job_events.py); GET /v1/jobs/{id}/content: the file
  (see job_content.py).

A job is JSON as jobs.proto says (job_calls.job_dict); the server's errors answer as every
/v1 route's do (errors.py).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from genserve.bridge.backend import BackendHolder
from genserve.bridge.errors import OPENAI_ERROR_SCHEMA, BridgeError, documented_errors
from genserve.bridge.job_calls import JOB_STATES, JobCalls, job_dict, state_of
from genserve.bridge.job_content import content_response
from genserve.bridge.job_events import job_events_response
from genserve.bridge.job_submit import MAX_KEY_CHARS, JobRequests, submit_request
from genserve.bridge.limits import ServerLimits
from genserve.bridge.reannotated import Reannotated
from genserve.bridge.request_id import current_request_id
from genserve.bridge.schemas import one_of
from genserve.contract import spec_for

PREFIX = "/v1/jobs"
MAX_PAGE_SIZE = 500
BYTE_OFFSET = r"^[0-9]{1,19}$"
PAGE_TOKEN = r"^[0-9]{0,19}$"  # the server's tokens (a position in its list)
JobState = one_of(JOB_STATES)
JOB_SCHEMA: dict[str, Any] = {"type": "object", "description": "genserve.v1.Job as JSON"}
JOB_ANSWER = {"content": {"application/json": {"schema": JOB_SCHEMA}}, "description": "the job"}
FILE_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
    206: {"description": "the byte range asked for"},
    409: {"description": "the job is not finished (a Range), failed or was cancelled"},
    410: {"description": "the job expired: its file is deleted"},
    416: {"description": "the range starts past the end of the file"},
}


class JobList(BaseModel):
    jobs: list[dict[str, Any]]
    next_page_token: str = Field(description="empty on the last page")


def build_jobs_router(backend: BackendHolder, limits: ServerLimits) -> APIRouter:
    router = APIRouter(
        prefix=PREFIX, tags=["jobs"], responses=documented_errors(OPENAI_ERROR_SCHEMA)
    )
    JobRoutes(JobCalls(backend), JobRequests(limits)).add_to(router)
    return router


def submitted(job: Any) -> JSONResponse:
    """202 for a new job, with where to find it; 200 for the one an idempotency key made
    earlier (its Submit call had another request id)."""
    if job.request_id and job.request_id != current_request_id():
        return JSONResponse(job_dict(job))
    return JSONResponse(job_dict(job), status_code=202, headers={"Location": f"{PREFIX}/{job.id}"})


class JobRoutes:
    def __init__(self, calls: JobCalls, requests: JobRequests) -> None:
        self._calls = calls
        self._requests = requests

    def add_to(self, router: APIRouter) -> None:
        one: dict[str, Any] = {"responses": {200: JOB_ANSWER}}
        submit = Reannotated(self.submit, body=self._requests.submission())
        router.add_api_route(
            "",
            submit,
            methods=["POST"],
            status_code=202,
            responses={202: JOB_ANSWER, 200: {**JOB_ANSWER, "description": "the key's job"}},
        )
        router.add_api_route("", self.list, methods=["GET"], response_model=JobList)
        router.add_api_route("/{job_id}", self.get, methods=["GET"], **one)
        router.add_api_route("/{job_id}/cancel", self.cancel, methods=["POST"], **one)
        router.add_api_route("/{job_id}", self.delete, methods=["DELETE"])
        router.add_api_route("/{job_id}/events", self.events, methods=["GET"])
        router.add_api_route(
            "/{job_id}/content",
            self.content,
            methods=["GET"],
            response_class=Response,
            responses=FILE_ANSWER,
        )

    async def submit(
        self,
        body: BaseModel,
        idempotency_key: Annotated[str | None, Header(max_length=MAX_KEY_CHARS)] = None,
    ) -> JSONResponse:
        """Submit a job: it runs on the server whether or not anyone watches it."""
        submission: Any = body  # one of JobRequests.submission()'s shapes
        spec = spec_for(submission.modality)
        params = self._requests.params(spec.name)
        request = params.from_valid_json(submission.params, ("params",))
        key = submission.idempotency_key or idempotency_key
        job = await self._calls.submit(submit_request(spec, request, key, submission.ttl_s))
        return submitted(job)

    async def list(
        self,
        page_size: Annotated[int, Query(ge=0, le=MAX_PAGE_SIZE)] = 0,
        page_token: Annotated[
            str, Query(pattern=PAGE_TOKEN, description="the previous page's next_page_token")
        ] = "",
        state: Annotated[JobState | None, Query()] = None,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        """The caller's jobs, newest first; page_size 0: 50."""
        reply = await self._calls.list(page_size, page_token, state)
        return {
            "jobs": [job_dict(job) for job in reply.jobs],
            "next_page_token": reply.next_page_token,
        }

    async def get(self, job_id: str) -> dict[str, Any]:
        return job_dict(await self._calls.get(job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stops the job at its next step; a finished job is returned unchanged."""
        return job_dict(await self._calls.cancel(job_id))

    async def delete(self, job_id: str) -> dict[str, Any]:
        """Removes the job and its file (a running job is cancelled first)."""
        return {"id": job_id, "deleted": await self._calls.delete(job_id)}

    async def events(
        self,
        job_id: str,
        data: Annotated[bool, Query(description="chunks with their bytes (base64)")] = False,
        from_offset: Annotated[int, Query(ge=0)] = 0,
        last_event_id: Annotated[
            str, Header(pattern=BYTE_OFFSET, description="resume from this byte offset")
        ] = "",
    ) -> Response:
        """Server-Sent Events of the job; each `id` is the byte offset reached, and a
        reconnect with Last-Event-ID resumes from it."""
        offset = from_offset
        if last_event_id:
            offset = int(last_event_id)
        job = await self._calls.get(job_id)  # an unknown job is a 404, not an event
        if state_of(job) == "succeeded" and offset > job.final.total_bytes:
            message = f"offset {offset}: past the end of the file's {job.final.total_bytes} bytes"
            raise BridgeError(416, "OUT_OF_RANGE", message)
        return job_events_response(self._calls.watch(job_id, offset), offset, data)

    async def content(self, request: Request, job_id: str) -> Response:
        """The job's file: ranges on a finished one, followed as written otherwise."""
        return await content_response(request, self._calls, await self._calls.get(job_id))
