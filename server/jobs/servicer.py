"""genserve.v1.JobService: protobuf in and out at this edge, plain records inside.

A job belongs to the identity that submitted it; to anyone else it does not exist
(NOT_FOUND), so ids leak nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from grpc.aio import ServicerContext

from genserve.contract.events import media_event_to_pb
from genserve.server.auth.caller import caller_var
from genserve.server.errors import InvalidArgument, NotFound
from genserve.server.jobs.convert import job_to_pb, state_from_pb
from genserve.server.jobs.reader import JobReader
from genserve.server.jobs.records import JobRecord
from genserve.server.jobs.runner import JobRunner
from genserve.server.request_context import current_call_details, current_request_id
from genserve.v1 import common_pb2, jobs_pb2

Context: TypeAlias = ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# The modalities a job can run: the proto's oneof, whose field names are the contract's.
JOB_MODALITIES = tuple(
    field.name for field in jobs_pb2.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["request"].fields
)


def _owner() -> str:
    caller = caller_var.get()
    return caller.identity if caller is not None else ""


class JobServicer:
    def __init__(self, runner: JobRunner, reader: JobReader) -> None:
        self._runner = runner
        self._reader = reader

    def _owned(self, job_id: str) -> JobRecord:
        job = self._runner.store.get(job_id) if job_id else None
        if job is None or job.owner != _owner():
            raise NotFound(f"no job {job_id!r}")
        current_call_details().job_id = job.id
        current_call_details().model = job.model
        return job

    def _pb(self, job: JobRecord) -> jobs_pb2.Job:
        return job_to_pb(job, self._runner.queue_position(job))

    async def Submit(self, request: jobs_pb2.SubmitJobRequest, context: Context) -> jobs_pb2.Job:
        modality = request.WhichOneof("request")
        if modality is None:
            raise InvalidArgument("request", f"set one of {', '.join(JOB_MODALITIES)}")
        job = await self._runner.submit(
            _owner(),
            modality,
            getattr(request, modality),
            request.idempotency_key,
            float(request.ttl_s),
            current_request_id(),
        )
        call = current_call_details()
        call.job_id, call.model = job.id, job.model
        return self._pb(job)

    async def Get(self, request: jobs_pb2.GetJobRequest, context: Context) -> jobs_pb2.Job:
        return self._pb(self._owned(request.id))

    async def Watch(
        self, request: jobs_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[common_pb2.MediaEvent]:
        job = self._owned(request.id)
        async for event in self._reader.watch(job.id, request.from_offset):
            yield media_event_to_pb(event)

    async def Download(
        self, request: jobs_pb2.DownloadJobRequest, context: Context
    ) -> AsyncIterator[common_pb2.DataChunk]:
        job = self._owned(request.id)
        async for chunk in self._reader.download(job.id, request.offset, request.length):
            yield common_pb2.DataChunk(data=chunk.data, offset=chunk.offset)

    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: Context) -> jobs_pb2.Job:
        return self._pb(await self._runner.cancel(self._owned(request.id)))

    async def List(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}, got {size}")
        before = None
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument("page_token", "not a token from a previous page")
            before = int(request.page_token)
        state = state_from_pb(request.state)
        jobs = self._runner.store.page(_owner(), state, before, size + 1)
        more = len(jobs) > size
        jobs = jobs[:size]
        return jobs_pb2.ListJobsResponse(
            jobs=[self._pb(job) for job in jobs],
            next_page_token=str(jobs[-1].sequence) if more else "",
        )

    async def Delete(
        self, request: jobs_pb2.DeleteJobRequest, context: Context
    ) -> jobs_pb2.DeleteJobResponse:
        await self._runner.delete(self._owned(request.id))
        return jobs_pb2.DeleteJobResponse(deleted=True)
