"""JobService without I/O: its RPCs, the requests the SDK sends and the plain job it hands
back. Protobuf stops here; both transports (jobs.py, async_jobs.py) send what this builds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from google.protobuf.message import Message

from genserve.contract import ModalitySpec, spec_for
from genserve.contract.events import (
    Chunk,
    Final,
    Header,
    MediaEvent,
    Progress,
    media_event_from_pb,
)
from genserve.contract.spec import enum_names, enum_values
from genserve.v1 import common_pb2, jobs_pb2

from .calls import Kind, Rpc, kind_of
from .request import build_request

# One Get, Submit, Cancel, List or Delete; a Submit may carry an upload (video's image).
JOB_CALL_TIMEOUT_S = 30.0
# One Watch or Download stream: a job may queue and run for hours; each re-attach gets anew.
JOB_STREAM_TIMEOUT_S = 24 * 3600.0


def _rpc(method: str, reply_type: type[Message]) -> Rpc:
    service = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
    return Rpc(f"/{service.full_name}/{method}", reply_type)


SUBMIT = _rpc("Submit", jobs_pb2.Job)
GET = _rpc("Get", jobs_pb2.Job)
WATCH = _rpc("Watch", common_pb2.MediaEvent)
DOWNLOAD = _rpc("Download", common_pb2.DataChunk)
CANCEL = _rpc("Cancel", jobs_pb2.Job)
LIST = _rpc("List", jobs_pb2.ListJobsResponse)
DELETE = _rpc("Delete", jobs_pb2.DeleteJobResponse)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # finished, and its artifact deleted after its TTL
    UNSPECIFIED = "unspecified"  # a state this SDK does not know (a newer server's)

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


_STATE_NAMES = enum_names(jobs_pb2.JobState.DESCRIPTOR)  # 1 -> "queued", ...
_STATE_NUMBERS = enum_values(jobs_pb2.JobState.DESCRIPTOR)


@dataclass(frozen=True)
class JobError:
    code: str  # the gRPC status code's name, e.g. INVALID_ARGUMENT
    message: str


@dataclass(frozen=True)
class JobInfo:
    """genserve.v1.Job as plain data."""

    id: str
    modality: str
    model: str
    state: JobState
    progress: Progress | None = None  # the last progress event
    queue_position: int = 0  # 1 = next to run; 0 when not queued
    header: Header | None = None  # once the job has sent it
    final: Final | None = None  # once succeeded: size, sha256, timings, seed
    error: JobError | None = None  # once failed (or cancelled)
    bytes_written: int = 0
    seed: int = 0
    request_id: str = ""  # the Submit call's: joins the usage log
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    expires_at: float = 0.0
    attempts: int = 0
    idempotency_key: str = ""

    @property
    def finished(self) -> bool:
        return self.state.finished


@dataclass(frozen=True)
class JobPage:
    jobs: tuple[JobInfo, ...]
    next_page_token: str


def _media(case: str, value: Message) -> MediaEvent:
    event = common_pb2.MediaEvent()
    getattr(event, case).CopyFrom(value)
    return media_event_from_pb(event)


def job_from_pb(job: Any) -> JobInfo:
    """genserve.v1.Job -> JobInfo; a message field the server has not set is None."""
    header = _media("header", job.header) if job.HasField("header") else None
    progress = _media("progress", job.progress) if job.HasField("progress") else None
    final = _media("final", job.final) if job.HasField("final") else None
    error = JobError(job.error.code, job.error.message) if job.HasField("error") else None
    assert header is None or isinstance(header, Header)
    assert progress is None or isinstance(progress, Progress)
    assert final is None or isinstance(final, Final)
    return JobInfo(
        id=job.id,
        modality=job.modality,
        model=job.model,
        state=JobState(_STATE_NAMES.get(job.state, JobState.UNSPECIFIED.value)),
        progress=progress,
        queue_position=job.queue_position,
        header=header,
        final=final,
        error=error,
        bytes_written=job.bytes_written,
        seed=job.seed,
        request_id=job.request_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=job.expires_at,
        attempts=job.attempts,
        idempotency_key=job.idempotency_key,
    )


def page_from_pb(reply: Any) -> JobPage:
    return JobPage(tuple(job_from_pb(job) for job in reply.jobs), reply.next_page_token)


def chunk_from_pb(chunk: Any) -> Chunk:
    """A Download stream's DataChunk as the plain Chunk a Watch stream carries."""
    return Chunk(chunk.data, chunk.offset)


# -- requests ----------------------------------------------------------------------------


def job_spec(modality: ModalitySpec[Any, Any] | str) -> ModalitySpec[Any, Any]:
    """The spec of a modality that runs as a job (a media one SubmitJobRequest names)."""
    spec = spec_for(modality) if isinstance(modality, str) else modality
    cases = jobs_pb2.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["request"].fields
    if kind_of(spec) is not Kind.MEDIA or spec.name not in {f.name for f in cases}:
        raise TypeError(f"{spec.name} does not run as a job: only media modalities do")
    return spec


def submit_request(
    modality: ModalitySpec[Any, Any] | str,
    args: tuple[Any, ...],
    params: dict[str, Any],
    idempotency_key: str | None = None,
    ttl_s: float | None = None,
) -> jobs_pb2.SubmitJobRequest:
    """The modality's request built as its Generate call builds it, wrapped for Submit."""
    spec = job_spec(modality)
    request = build_request(spec, args, params)
    ttl = 0 if ttl_s is None else max(1, math.ceil(ttl_s))  # 0: the server's default
    submit = jobs_pb2.SubmitJobRequest(idempotency_key=idempotency_key or "", ttl_s=ttl)
    getattr(submit, spec.name).CopyFrom(request)
    return submit


def list_request(
    state: JobState | str | None, page_size: int, page_token: str
) -> jobs_pb2.ListJobsRequest:
    name = None  # unset: every state
    if state is not None:
        number = _STATE_NUMBERS.get(JobState(state).value, 0)
        if number == 0:
            raise ValueError(f"no job state {state!r}")
        name = jobs_pb2.JobState.Name(number)
    return jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token, state=name)


def get_request(job_id: str) -> jobs_pb2.GetJobRequest:
    return jobs_pb2.GetJobRequest(id=job_id)


def cancel_request(job_id: str) -> jobs_pb2.CancelJobRequest:
    return jobs_pb2.CancelJobRequest(id=job_id)


def delete_request(job_id: str) -> jobs_pb2.DeleteJobRequest:
    return jobs_pb2.DeleteJobRequest(id=job_id)


def watch_request(job_id: str, from_offset: int) -> jobs_pb2.WatchJobRequest:
    return jobs_pb2.WatchJobRequest(id=job_id, from_offset=from_offset)


def download_request(job_id: str, offset: int) -> jobs_pb2.DownloadJobRequest:
    return jobs_pb2.DownloadJobRequest(id=job_id, offset=offset, length=0)
