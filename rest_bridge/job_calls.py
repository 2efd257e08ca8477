"""The bridge's JobService calls on its one channel, and a Job as JSON.

Protobuf stops here for the job routes: they get plain dicts and the calls' streams.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from genserve.bridge.backend import BackendHolder, current_metadata
from genserve.bridge.convert import event_dict, short_name
from genserve.contract import SPECS, ModalitySpec
from genserve.contract.spec import enum_names
from genserve.v1 import jobs_pb2, jobs_pb2_grpc

# One Submit, Get, Cancel, List or Delete (a Submit may carry an upload: video's image).
JOB_CALL_TIMEOUT_S = 30.0
# Watch and Download follow a job for as long as it queues and runs; the HTTP client's
# leaving cancels them.
JOB_STREAM_TIMEOUT_S: float | None = None

_REQUEST_ONEOF = jobs_pb2.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["request"]
# The modalities a job runs: those the SubmitJobRequest's oneof names.
JOB_SPECS: tuple[ModalitySpec[Any, Any], ...] = tuple(
    spec for spec in SPECS if spec.name in {f.name for f in _REQUEST_ONEOF.fields}
)
JOB_STATES: tuple[str, ...] = tuple(enum_names(jobs_pb2.JobState.DESCRIPTOR).values())
UNFINISHED = frozenset({"queued", "running"})
_MESSAGE_FIELDS = tuple(
    f.name for f in jobs_pb2.Job.DESCRIPTOR.fields if f.message_type is not None
)


def state_of(job: jobs_pb2.Job) -> str:
    """The job's state by its short name: queued, running, succeeded..."""
    return short_name(job, "state")


def job_dict(job: jobs_pb2.Job) -> dict[str, Any]:
    """Every field (proto JSON: 64-bit integers as strings), the state by its short name,
    the events not yet sent (header, progress, final, error) as null."""
    data = event_dict(job)
    for name in _MESSAGE_FIELDS:
        data.setdefault(name, None)
    return data


class JobCalls:
    """JobService on the channel the lifespan opened, with the HTTP request's metadata
    (its request ID and the caller's key)."""

    def __init__(self, backend: BackendHolder) -> None:
        self._backend = backend
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _jobs(self) -> Any:
        channel = self._backend.stubs().channel
        if channel is not self._channel:  # a new lifespan, a new channel
            self._channel, self._stub = channel, jobs_pb2_grpc.JobServiceStub(channel)
        return self._stub

    async def _unary(self, method: str, request: Message) -> Any:
        rpc = getattr(self._jobs(), method)
        return await rpc(request, metadata=current_metadata(), timeout=JOB_CALL_TIMEOUT_S)

    async def submit(self, request: jobs_pb2.SubmitJobRequest) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._unary("Submit", request)
        return job

    async def get(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._unary("Get", jobs_pb2.GetJobRequest(id=job_id))
        return job

    async def cancel(self, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self._unary("Cancel", jobs_pb2.CancelJobRequest(id=job_id))
        return job

    async def delete(self, job_id: str) -> bool:
        reply = await self._unary("Delete", jobs_pb2.DeleteJobRequest(id=job_id))
        return bool(reply.deleted)

    async def list(
        self, page_size: int = 0, page_token: str = "", state: str | None = None
    ) -> jobs_pb2.ListJobsResponse:
        request = jobs_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            state=f"JOB_STATE_{state.upper()}" if state is not None else None,
        )
        reply: jobs_pb2.ListJobsResponse = await self._unary("List", request)
        return reply

    def watch(self, job_id: str, from_offset: int = 0) -> Any:
        """The job's MediaEvents from `from_offset`: a call to read."""
        request = jobs_pb2.WatchJobRequest(id=job_id, from_offset=from_offset)
        return self._jobs().Watch(
            request, metadata=current_metadata(), timeout=JOB_STREAM_TIMEOUT_S
        )

    def download(self, job_id: str, offset: int = 0, length: int = 0) -> Any:
        """The artifact's DataChunks from `offset` (`length` 0: to the end): a call to read."""
        request = jobs_pb2.DownloadJobRequest(id=job_id, offset=offset, length=length)
        return self._jobs().Download(
            request, metadata=current_metadata(), timeout=JOB_STREAM_TIMEOUT_S
        )
