"""Jobs on the asyncio client: jobs.py's calls, awaited (`job = await gs.submit(...)`,
`await job.wait()`, `async for event in job.watch()`). The rule is the same cursor's;
only the sending and the sleeping differ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import grpc
from google.protobuf.message import Message

from genserve.contract import ModalitySpec
from genserve.contract.events import Header, Progress, media_event_from_pb

from .calls import Rpc
from .channel import new_request_id
from .errors import GenServeError, IntegrityError, InternalError, UnavailableError
from .job_cursor import Action, JobCursor, JobEvent, Restarted, Step
from .job_info import (
    CANCEL,
    DELETE,
    DOWNLOAD,
    GET,
    JOB_CALL_TIMEOUT_S,
    JOB_STREAM_TIMEOUT_S,
    LIST,
    SUBMIT,
    WATCH,
    JobInfo,
    JobState,
    cancel_request,
    chunk_from_pb,
    delete_request,
    download_request,
    get_request,
    job_from_pb,
    list_request,
    page_from_pb,
    submit_request,
    watch_request,
)
from .jobs import (
    READ_BLOCK,
    BytesCallback,
    ProgressCallback,
    dropped,
    integrity,
    job_error,
    open_for_download,
    remaining,
    succeeded,
)


class AsyncTransport(Protocol):
    async def _unary(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Any: ...

    def _stream(
        self, rpc: Rpc, request: Message, timeout: float, request_id: str
    ) -> AsyncGenerator[Any, None]: ...


class AsyncJobsMixin:
    """AsyncGenServe's job calls."""

    if TYPE_CHECKING:

        async def _unary(
            self, rpc: Rpc, request: Message, timeout: float, request_id: str
        ) -> Any: ...

    async def submit(
        self,
        modality: ModalitySpec[Any, Any] | str,
        /,
        *args: Any,
        idempotency_key: str | None = None,
        ttl_s: float | None = None,
        **params: Any,
    ) -> AsyncJob:
        request = submit_request(modality, args, params, idempotency_key, ttl_s)
        reply = await self._unary(SUBMIT, request, JOB_CALL_TIMEOUT_S, new_request_id())
        return AsyncJob(self, job_from_pb(reply))

    async def job(self, job_id: str) -> AsyncJob:
        reply = await self._unary(GET, get_request(job_id), JOB_CALL_TIMEOUT_S, new_request_id())
        return AsyncJob(self, job_from_pb(reply))

    async def jobs(
        self, state: JobState | str | None = None, page_size: int = 0
    ) -> AsyncIterator[AsyncJob]:
        token = ""
        while True:
            request = list_request(state, page_size, token)
            reply = await self._unary(LIST, request, JOB_CALL_TIMEOUT_S, new_request_id())
            page = page_from_pb(reply)
            for info in page.jobs:
                yield AsyncJob(self, info)
            if not page.next_page_token:
                return
            token = page.next_page_token


class AsyncJob:
    """jobs.Job, awaited."""

    def __init__(self, client: Any, info: JobInfo) -> None:
        self._client: AsyncTransport = client
        self._info = info

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r}, {self._info.state.value})"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> JobInfo:
        return self._info

    async def refresh(self) -> JobInfo:
        self._info = job_from_pb(await self._call(GET, get_request(self.id)))
        return self._info

    async def cancel(self) -> JobInfo:
        self._info = job_from_pb(await self._call(CANCEL, cancel_request(self.id)))
        return self._info

    async def delete(self) -> bool:
        return bool((await self._call(DELETE, delete_request(self.id))).deleted)

    def watch(
        self, on_progress: ProgressCallback | None = None, from_offset: int = 0
    ) -> AsyncGenerator[JobEvent, None]:
        return self._watch(JobCursor(from_offset), on_progress, None)

    async def wait(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> JobInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        info = await self.refresh()
        if not info.finished:
            events = self._watch(JobCursor(info.bytes_written), on_progress, deadline)
            async with aclosing(events):
                async for _ in events:
                    pass
            info = await self.refresh()
        return succeeded(info)

    async def download(
        self, path: str | Path, resume: bool = True, on_bytes: BytesCallback | None = None
    ) -> Path:
        info = await self.refresh()
        if info.finished:
            succeeded(info)
        target = Path(path)
        if target.is_dir():
            target = target / (info.header or await self._header()).file_name
        with open_for_download(target, resume) as file:
            await _AsyncDownloadRun(self, file, on_bytes).run(info)
        return target

    # -- sending ------------------------------------------------------------------------

    async def _call(self, rpc: Rpc, request: Message) -> Any:
        return await self._client._unary(rpc, request, JOB_CALL_TIMEOUT_S, new_request_id())

    async def _header(self) -> Header:
        request = watch_request(self.id, 0)
        events = self._client._stream(WATCH, request, JOB_STREAM_TIMEOUT_S, new_request_id())
        async with aclosing(events):
            async for event in events:
                header = media_event_from_pb(event)
                if isinstance(header, Header):
                    return header
        raise InternalError(grpc.StatusCode.INTERNAL, "the Watch stream sent no header", None)

    async def _watch(
        self, cursor: JobCursor, on_progress: ProgressCallback | None, deadline: float | None
    ) -> AsyncGenerator[JobEvent, None]:
        request_id = new_request_id()
        while True:
            request = watch_request(self.id, cursor.offset)
            try:
                events = self._client._stream(WATCH, request, remaining(deadline), request_id)
                async with aclosing(events):
                    async for pb in events:
                        event = cursor.feed(media_event_from_pb(pb))
                        if isinstance(event, Progress) and on_progress is not None:
                            on_progress(event)
                        if event is not None:
                            yield event
                step = cursor.on_end()
                if step is None:
                    return
                error: GenServeError = dropped(request_id)
            except IntegrityError:
                raise
            except GenServeError as failure:
                error, step = failure, cursor.on_error(failure.code)
            restarted = await self._resolve(step, error, deadline)
            if restarted is not None:
                yield restarted

    async def _resolve(
        self, step: Step, error: GenServeError, deadline: float | None
    ) -> Restarted | None:
        if step.action is Action.RAISE:
            raise error
        if step.action is Action.CHECK and await self._failed():
            raise job_error(self._info) from error
        if deadline is not None and time.monotonic() + step.delay_s >= deadline:
            raise error
        await asyncio.sleep(step.delay_s)
        return step.restarted

    async def _failed(self) -> bool:
        try:
            info = await self.refresh()
        except UnavailableError:
            return False
        return info.finished and info.state is not JobState.SUCCEEDED


class _AsyncDownloadRun:
    """jobs._DownloadRun, awaited (the file is written in place: chunks are small)."""

    def __init__(self, job: AsyncJob, file: BinaryIO, on_bytes: BytesCallback | None) -> None:
        self._job = job
        self._file = file
        self._on_bytes = on_bytes or (lambda _: None)
        self._cursor = JobCursor(0, prefix_is_local=True)
        while block := file.read(READ_BLOCK):
            self._cursor.feed_prefix(block)
        self._had_prefix = self._cursor.offset > 0

    async def run(self, info: JobInfo) -> None:
        request_id = new_request_id()
        self._on_bytes(self._cursor.offset)
        while True:
            attempts = self._job.info.attempts
            step, error = await self._step(info, request_id, attempts)
            if step is None:
                return
            if await self._job._resolve(step, error, None) is not None:
                self._file.seek(0)
                self._file.truncate()
                self._on_bytes(0)
            info = self._job.info

    async def _step(
        self, info: JobInfo, request_id: str, attempts: int
    ) -> tuple[Step | None, GenServeError]:
        cursor = self._cursor
        if info.final is not None and cursor.offset >= info.final.total_bytes:
            return self._finish(info, attempts), integrity(info)
        try:
            await self._fetch(request_id)
            info = await self._job.refresh()
        except IntegrityError:
            raise
        except GenServeError as failure:
            if failure.code == grpc.StatusCode.FAILED_PRECONDITION and await self._job._failed():
                raise job_error(self._job.info) from failure
            return cursor.on_error(failure.code), failure
        if info.finished:
            return self._finish(succeeded(info), attempts), integrity(info)
        return cursor.on_end(), dropped(request_id)

    async def _fetch(self, request_id: str) -> None:
        request = download_request(self._job.id, self._cursor.offset)
        client = self._job._client
        chunks = client._stream(DOWNLOAD, request, JOB_STREAM_TIMEOUT_S, request_id)
        async with aclosing(chunks):
            async for pb in chunks:
                chunk = self._cursor.feed_chunk(chunk_from_pb(pb))
                if chunk is not None:
                    self._file.write(chunk.data)
                    self._on_bytes(self._cursor.offset)
        self._file.flush()

    def _finish(self, info: JobInfo, attempts: int) -> Step | None:
        assert info.final is not None
        try:
            self._cursor.finish(info.final)
            return None
        except IntegrityError:
            if not (self._had_prefix or info.attempts != attempts):
                raise
        self._had_prefix = False
        return self._cursor.on_mismatch()
