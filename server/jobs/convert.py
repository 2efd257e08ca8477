"""JobRecord -> genserve.v1.Job: the one place a job becomes protobuf."""

from __future__ import annotations

from typing import Any

from genserve.contract.events import media_event_to_pb
from genserve.server.jobs.records import JobRecord, JobState
from genserve.v1 import jobs_pb2

_STATE_TO_PB: dict[JobState, Any] = {  # the generated enum type
    state: jobs_pb2.JobState.Value(f"JOB_STATE_{state.name}") for state in JobState
}
_STATE_FROM_PB: dict[int, JobState] = {number: state for state, number in _STATE_TO_PB.items()}


def state_from_pb(number: int) -> JobState | None:
    """None for JOB_STATE_UNSPECIFIED: every state."""
    return _STATE_FROM_PB.get(number)


def job_to_pb(job: JobRecord, queue_position: int) -> jobs_pb2.Job:
    message = jobs_pb2.Job(
        id=job.id,
        modality=job.modality,
        model=job.model,
        state=_STATE_TO_PB[job.state],
        queue_position=queue_position,
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
    if job.progress is not None:
        message.progress.CopyFrom(media_event_to_pb(job.progress).progress)
    if job.header is not None:
        message.header.CopyFrom(media_event_to_pb(job.header).header)
    if job.final is not None:
        message.final.CopyFrom(media_event_to_pb(job.final).final)
    if job.error is not None:
        message.error.code = job.error.code
        message.error.message = job.error.message
    return message
