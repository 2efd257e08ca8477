"""A stand-in JobService for the SDK's and the CLI's job tests: one finished job whose
file streams in small chunks, and breaks scripted in advance (a stream cut after so many
chunks with UNAVAILABLE, the job re-run with other bytes: ABORTED), so every re-attach
path runs in milliseconds against a real gRPC channel."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from genserve.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

DATA = b"the first run's bytes, in many small chunks"
RERUN = b"a re-run made other bytes, longer than the first ones"
CHUNK = 5
JOB_ID = "job-1"


@dataclass(frozen=True)
class Cut:
    """The next Watch or Download call fails with `code` after sending `after` chunks."""

    code: grpc.StatusCode
    after: int = 0


@dataclass
class FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    data: bytes = DATA
    state: int = jobs_pb2.JOB_STATE_SUCCEEDED
    error: tuple[str, str] | None = None  # a failed job's (code, message)
    cuts: list[Cut] = field(default_factory=list)
    rerun_after_first_cut: bool = False  # the job re-runs (RERUN) once a stream is cut
    watch_offsets: list[int] = field(default_factory=list)
    download_offsets: list[int] = field(default_factory=list)
    submitted: list[jobs_pb2.SubmitJobRequest] = field(default_factory=list)
    listed: list[jobs_pb2.ListJobsRequest] = field(default_factory=list)
    job_count: int = 5  # List's jobs
    attempts: int = 1
    port: int = 0
    _server: Any = None

    def start(self) -> FakeJobs:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def job(self, job_id: str = JOB_ID) -> jobs_pb2.Job:
        job = jobs_pb2.Job(
            id=job_id,
            modality="image",
            model="tiny-sd",
            state=self.state,
            header=common_pb2.MediaHeader(mime_type="image/png", file_name=f"{job_id}.png"),
            progress=common_pb2.Progress(step=2, total_steps=2, stage="denoising"),
            bytes_written=len(self.data),
            seed=7,
            attempts=self.attempts,
        )
        if self.state == jobs_pb2.JOB_STATE_SUCCEEDED:
            job.final.CopyFrom(self.final())
        if self.error is not None:
            job.error.CopyFrom(jobs_pb2.JobError(code=self.error[0], message=self.error[1]))
        return job

    def final(self) -> common_pb2.MediaFinal:
        digest = hashlib.sha256(self.data).hexdigest()
        return common_pb2.MediaFinal(total_bytes=len(self.data), sha256=digest, seed=7)

    # -- the RPCs -------------------------------------------------------------------------

    def Submit(self, request: Any, context: Any) -> jobs_pb2.Job:
        self.submitted.append(request)
        job = self.job(f"job-{request.idempotency_key or len(self.submitted)}")
        job.state = jobs_pb2.JOB_STATE_QUEUED
        job.idempotency_key = request.idempotency_key
        return job

    def Get(self, request: Any, context: Any) -> jobs_pb2.Job:
        if request.id != JOB_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.id!r}")
        return self.job()

    def Cancel(self, request: Any, context: Any) -> jobs_pb2.Job:
        self.state = jobs_pb2.JOB_STATE_CANCELLED
        return self.job(request.id)

    def Delete(self, request: Any, context: Any) -> jobs_pb2.DeleteJobResponse:
        return jobs_pb2.DeleteJobResponse(deleted=True)

    def List(self, request: Any, context: Any) -> jobs_pb2.ListJobsResponse:
        self.listed.append(request)
        start = int(request.page_token or 0)
        size = request.page_size or 50
        ids = [f"job-{n}" for n in range(start, min(start + size, self.job_count))]
        more = start + size < self.job_count
        return jobs_pb2.ListJobsResponse(
            jobs=[self.job(i) for i in ids], next_page_token=str(start + size) if more else ""
        )

    def Watch(self, request: Any, context: Any) -> Iterator[common_pb2.MediaEvent]:
        self.watch_offsets.append(request.from_offset)
        self._check(request.from_offset, context)
        job = self.job()
        yield common_pb2.MediaEvent(header=job.header)
        yield common_pb2.MediaEvent(progress=job.progress)
        for chunk in self._chunks(request.from_offset, context):
            yield common_pb2.MediaEvent(chunk=chunk)
        self._end(context)
        yield common_pb2.MediaEvent(final=self.final())

    def Download(self, request: Any, context: Any) -> Iterator[common_pb2.DataChunk]:
        self.download_offsets.append(request.offset)
        self._check(request.offset, context)
        yield from self._chunks(request.offset, context)

    # -- scripted breaks ------------------------------------------------------------------

    def _check(self, offset: int, context: Any) -> None:
        if self.data is RERUN and offset > 0 and self._diverged:
            context.abort(grpc.StatusCode.ABORTED, "the job restarted and its output changed")
        if offset > len(self.data):
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} is past the end")
        if self.state == jobs_pb2.JOB_STATE_CANCELLED:
            context.abort(grpc.StatusCode.CANCELLED, "the job was cancelled")

    _diverged = False

    def _chunks(self, offset: int, context: Any) -> Iterator[common_pb2.DataChunk]:
        cut = self.cuts.pop(0) if self.cuts else None
        for sent, start in enumerate(range(offset, len(self.data), CHUNK)):
            if cut is not None and sent == cut.after:
                self._cut(cut, context)
            yield common_pb2.DataChunk(data=self.data[start : start + CHUNK], offset=start)
        if cut is not None:
            self._cut(cut, context)

    def _cut(self, cut: Cut, context: Any) -> None:
        if self.rerun_after_first_cut and self.data is not RERUN:
            self.data, self._diverged, self.attempts = RERUN, True, self.attempts + 1
        context.abort(cut.code, f"scripted {cut.code.name}")

    def _end(self, context: Any) -> None:
        if self.error is not None:
            code = grpc.StatusCode.__members__[self.error[0]]
            context.abort(code, f"job {JOB_ID} failed: {self.error[1]}")
