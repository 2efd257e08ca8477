"""Watch and Download: a job's events and bytes, read from the stores from any byte
offset, following a job still being written until its end. Any number at once: each
reads the store, none waits on the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from genserve.contract.events import Chunk, MediaEvent
from genserve.server.errors import (
    Aborted,
    Cancelled,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    RecordedError,
)
from genserve.server.jobs.artifacts import ArtifactStore
from genserve.server.jobs.notices import JobNotices, wait_for_change
from genserve.server.jobs.records import JobRecord, JobState
from genserve.server.jobs.store import JobStore


class JobReader:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        notices: JobNotices,
        chunk_size: int,
        poll_s: float,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._notices = notices
        self._chunk_size = chunk_size
        self._poll_s = poll_s

    async def watch(self, job_id: str, from_offset: int) -> AsyncIterator[MediaEvent]:
        """The header, the last progress, chunks from `from_offset`, live progress, the final."""
        offset = from_offset
        header_sent = False
        last_progress = None
        while True:
            change = self._notices.listen(job_id)
            job = self._current(job_id)
            _check_offset(job, from_offset)
            if job.header is not None and not header_sent:
                header_sent = True
                yield job.header
            if header_sent:
                if job.progress is not None and job.progress != last_progress:
                    last_progress = job.progress
                    yield job.progress
                async for chunk in self._chunks(job, offset, job.bytes_written):
                    offset += len(chunk.data)
                    yield chunk
            if job.state.finished:
                _raise_if_unfinished(job)
                if job.final is not None:
                    yield job.final
                return
            await wait_for_change(change, self._poll_s)

    async def download(self, job_id: str, offset: int, length: int) -> AsyncIterator[Chunk]:
        """Bytes [offset, offset + length) (length 0: to the end), as they are written."""
        end: int | None = offset + length if length else None
        while True:
            change = self._notices.listen(job_id)
            job = self._current(job_id)
            _check_offset(job, offset)
            if job.state.finished and job.state is not JobState.SUCCEEDED:
                raise FailedPrecondition(f"job {job.id} is {job.state.value}: it has no file")
            stop = job.bytes_written if end is None else min(end, job.bytes_written)
            async for chunk in self._chunks(job, offset, stop):
                offset += len(chunk.data)
                yield chunk
            if end is not None and offset >= end:
                return
            if job.state is JobState.SUCCEEDED:
                return
            await wait_for_change(change, self._poll_s)

    async def _chunks(self, job: JobRecord, offset: int, stop: int) -> AsyncIterator[Chunk]:
        while offset < stop:
            data = self._artifacts.read(job.id, offset, min(self._chunk_size, stop - offset))
            if not data:  # deleted under us (cancelled, expired): the next read says why
                return
            yield Chunk(data, offset)
            offset += len(data)

    def _current(self, job_id: str) -> JobRecord:
        job = self._store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job


def _check_offset(job: JobRecord, offset: int) -> None:
    if 0 <= job.diverged_at < offset:
        raise Aborted(
            f"job {job.id} restarted and its output changed from byte {job.diverged_at}: "
            "read it again from 0"
        )
    if job.state is JobState.SUCCEEDED and job.final is not None and offset > job.final.total_bytes:
        raise OutOfRange(
            f"offset {offset} is past the end of job {job.id}'s {job.final.total_bytes} bytes"
        )


def _raise_if_unfinished(job: JobRecord) -> None:
    """A finished job without its file: say why, with the job's own code."""
    if job.state is JobState.SUCCEEDED:
        return
    if job.state is JobState.EXPIRED:
        raise FailedPrecondition(f"job {job.id} expired: its artifact was deleted")
    if job.state is JobState.CANCELLED:
        raise Cancelled(f"job {job.id} was cancelled")
    if job.error is None:
        raise RecordedError(grpc.StatusCode.INTERNAL, f"job {job.id} failed")
    code = grpc.StatusCode.__members__.get(job.error.code, grpc.StatusCode.INTERNAL)
    raise RecordedError(code, f"job {job.id} failed: {job.error.message}")
