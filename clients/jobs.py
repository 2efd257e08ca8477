"""Jobs on the blocking client: `gs.submit("image", "a room")` returns a Job at once; the
server runs it whether or not anyone is connected.

    with GenServe("localhost:50051") as gs:
        job = gs.submit("video", "room.png", num_frames=14, idempotency_key="room-1")
        job.wait(on_progress=print)          # re-attaches by itself across restarts
        job.download("room.mp4")             # resumes a partial file; checks the sha256
        for job in gs.jobs(state="running"): # every page
            print(job.id, job.info.progress)

The requests and replies are job_info's, the re-attach rule job_cursor's; this file sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import grpc
from google.protobuf.message import Message

from genserve.contract import ModalitySpec
from genserve.contract.events import Header, Progress, media_event_from_pb

from .calls import Rpc
from .channel import new_request_id
from .errors import (
    ERROR_BY_CODE,
    DeadlineExceededError,
    FailedPreconditionError,
    GenServeError,
    IntegrityError,
    InternalError,
    RequestCancelledError,
    UnavailableError,
)
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

ProgressCallback = Callable[[Progress], None]
BytesCallback = Callable[[int], None]  # the bytes of the file so far (0 after a restart)
READ_BLOCK = 1024 * 1024  # a partial file is digested in blocks of this size


class Transport(Protocol):
    def _unary(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Any: ...

    def _stream(
        self, rpc: Rpc, request: Message, timeout: float, request_id: str
    ) -> Generator[Any, None, None]: ...


class JobsMixin:
    """GenServe's job calls."""

    if TYPE_CHECKING:

        def _unary(self, rpc: Rpc, request: Message, timeout: float, request_id: str) -> Any: ...

    def submit(
        self,
        modality: ModalitySpec[Any, Any] | str,
        /,
        *args: Any,
        idempotency_key: str | None = None,
        ttl_s: float | None = None,
        **params: Any,
    ) -> Job:
        """Queues a media request (the fields of its Generate call) as a job; returns at
        once. The same `idempotency_key` again returns the job it made, not a new one."""
        request = submit_request(modality, args, params, idempotency_key, ttl_s)
        reply = self._unary(SUBMIT, request, JOB_CALL_TIMEOUT_S, new_request_id())
        return Job(self, job_from_pb(reply))

    def job(self, job_id: str) -> Job:
        """A job by its id (NotFoundError if it is not this caller's)."""
        reply = self._unary(GET, get_request(job_id), JOB_CALL_TIMEOUT_S, new_request_id())
        return Job(self, job_from_pb(reply))

    def jobs(self, state: JobState | str | None = None, page_size: int = 0) -> Iterator[Job]:
        """The caller's jobs, newest first, page after page (page_size 0: the server's)."""
        token = ""
        while True:
            request = list_request(state, page_size, token)
            page = page_from_pb(self._unary(LIST, request, JOB_CALL_TIMEOUT_S, new_request_id()))
            for info in page.jobs:
                yield Job(self, info)
            if not page.next_page_token:
                return
            token = page.next_page_token


class Job:
    """A handle on one job: its last known state (`info`), and its calls."""

    def __init__(self, client: Any, info: JobInfo) -> None:
        self._client: Transport = client
        self._info = info

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self._info.state.value})"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def info(self) -> JobInfo:
        """The job as last read (at submit, or by the last refresh)."""
        return self._info

    def refresh(self) -> JobInfo:
        self._info = job_from_pb(self._call(GET, get_request(self.id)))
        return self._info

    def cancel(self) -> JobInfo:
        """Stops it at its next step (a finished job is returned unchanged)."""
        self._info = job_from_pb(self._call(CANCEL, cancel_request(self.id)))
        return self._info

    def delete(self) -> bool:
        """Removes it and its file (a running job is cancelled first)."""
        return bool(self._call(DELETE, delete_request(self.id)).deleted)

    # -- streams ------------------------------------------------------------------------

    def watch(
        self, on_progress: ProgressCallback | None = None, from_offset: int = 0
    ) -> Iterator[JobEvent]:
        """Its events (header, progress, chunks, final), live, re-attaching by itself
        when the connection or the server goes away. A `Restarted` event means the job
        was run again with other bytes: what came before it is void, and chunks start
        again from 0. The sha256 is checked when the stream starts at 0."""
        return self._watch(JobCursor(from_offset), on_progress, None)

    def wait(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> JobInfo:
        """Blocks until the job has succeeded and returns it; a failed, cancelled or
        expired job raises its error, and DeadlineExceededError comes after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        info = self.refresh()
        if not info.finished:
            # Only what is still to come: the bytes already stored need not travel.
            for _ in self._watch(JobCursor(info.bytes_written), on_progress, deadline):
                pass
            info = self.refresh()
        return succeeded(info)

    def download(
        self, path: str | Path, resume: bool = True, on_bytes: BytesCallback | None = None
    ) -> Path:
        """Writes the job's file to `path` (a folder: the job's file name) as it is made,
        waiting for a queued job; with `resume`, a partial file there is continued from
        its size. Checks the size and sha256 against the job's final; returns the path."""
        info = self.refresh()
        if info.finished:
            succeeded(info)
        target = Path(path)
        if target.is_dir():
            target = target / (info.header or self._header()).file_name
        with open_for_download(target, resume) as file:
            _DownloadRun(self, file, on_bytes).run(info)
        return target

    # -- sending ------------------------------------------------------------------------

    def _call(self, rpc: Rpc, request: Message) -> Any:
        return self._client._unary(rpc, request, JOB_CALL_TIMEOUT_S, new_request_id())

    def _header(self) -> Header:
        """The job's header, from a Watch cut after its first event (it waits while
        the job is queued)."""
        request = watch_request(self.id, 0)
        events = self._client._stream(WATCH, request, JOB_STREAM_TIMEOUT_S, new_request_id())
        with closing(events) as stream:  # closing cancels the call
            for event in stream:
                header = media_event_from_pb(event)
                if isinstance(header, Header):
                    return header
        raise InternalError(grpc.StatusCode.INTERNAL, "the Watch stream sent no header", None)

    def _watch(
        self, cursor: JobCursor, on_progress: ProgressCallback | None, deadline: float | None
    ) -> Iterator[JobEvent]:
        request_id = new_request_id()  # one watch, however many re-attaches
        while True:
            request = watch_request(self.id, cursor.offset)
            try:
                for pb in self._client._stream(WATCH, request, remaining(deadline), request_id):
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
            restarted = self._resolve(step, error, deadline)
            if restarted is not None:
                yield restarted

    def _resolve(
        self, step: Step, error: GenServeError, deadline: float | None
    ) -> Restarted | None:
        """Carries out a failed stream's step: raises, or sleeps and lets it re-attach."""
        if step.action is Action.RAISE:
            raise error
        if step.action is Action.CHECK and self._failed():
            raise job_error(self._info) from error
        if deadline is not None and time.monotonic() + step.delay_s >= deadline:
            raise error
        time.sleep(step.delay_s)
        return step.restarted

    def _failed(self) -> bool:
        """Whether the job ended other than in success (a stream re-attaches otherwise)."""
        try:
            info = self.refresh()
        except UnavailableError:
            return False
        return info.finished and info.state is not JobState.SUCCEEDED


class _DownloadRun:
    """One download into an open file: Download calls from the cursor's offset until the
    job's final, re-attached and restarted by the cursor's rule."""

    def __init__(self, job: Job, file: BinaryIO, on_bytes: BytesCallback | None) -> None:
        self._job = job
        self._file = file
        self._on_bytes = on_bytes or (lambda _: None)
        self._cursor = JobCursor(0, prefix_is_local=True)
        while block := file.read(READ_BLOCK):
            self._cursor.feed_prefix(block)
        self._had_prefix = self._cursor.offset > 0

    def run(self, info: JobInfo) -> None:
        request_id = new_request_id()
        self._on_bytes(self._cursor.offset)
        while True:
            attempts = self._job.info.attempts
            step, error = self._step(info, request_id, attempts)
            if step is None:
                return
            if self._job._resolve(step, error, None) is not None:
                self._file.seek(0)
                self._file.truncate()
                self._on_bytes(0)
            info = self._job.info

    def _step(
        self, info: JobInfo, request_id: str, attempts: int
    ) -> tuple[Step | None, GenServeError]:
        """One Download call (none when the file is whole) and what comes next: None
        once the file is the job's, else the step and the error it raises if it must."""
        cursor = self._cursor
        if info.final is not None and cursor.offset >= info.final.total_bytes:
            return self._finish(info, attempts), integrity(info)
        try:
            self._fetch(request_id)
            info = self._job.refresh()
        except IntegrityError:
            raise
        except GenServeError as failure:
            if failure.code == grpc.StatusCode.FAILED_PRECONDITION and self._job._failed():
                raise job_error(self._job.info) from failure
            return cursor.on_error(failure.code), failure
        if info.finished:
            return self._finish(succeeded(info), attempts), integrity(info)
        return cursor.on_end(), dropped(request_id)

    def _fetch(self, request_id: str) -> None:
        request = download_request(self._job.id, self._cursor.offset)
        client = self._job._client
        for pb in client._stream(DOWNLOAD, request, JOB_STREAM_TIMEOUT_S, request_id):
            chunk = self._cursor.feed_chunk(chunk_from_pb(pb))
            if chunk is not None:
                self._file.write(chunk.data)
                self._on_bytes(self._cursor.offset)
        self._file.flush()

    def _finish(self, info: JobInfo, attempts: int) -> Step | None:
        """None once the bytes are the final's; else a restart from 0 when they may be
        another run's (a resumed file, a job run again), or RAISE."""
        assert info.final is not None
        try:
            self._cursor.finish(info.final)
            return None
        except IntegrityError:
            if not (self._had_prefix or info.attempts != attempts):
                raise
        self._had_prefix = False
        return self._cursor.on_mismatch()


# -- shared with the async transport -----------------------------------------------------


def remaining(deadline: float | None) -> float:
    """One stream's timeout: what is left of the caller's, else a long one."""
    if deadline is None:
        return JOB_STREAM_TIMEOUT_S
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, "wait timed out", None)
    return left


def succeeded(info: JobInfo) -> JobInfo:
    """The job, if it succeeded; its error otherwise (it must have finished)."""
    if info.state is JobState.SUCCEEDED:
        return info
    raise job_error(info)


def job_error(info: JobInfo) -> GenServeError:
    """A finished job's outcome as the SDK's error (the code it failed with)."""
    if info.state is JobState.CANCELLED:
        return RequestCancelledError(
            grpc.StatusCode.CANCELLED, f"job {info.id} was cancelled", None
        )
    if info.state is JobState.EXPIRED:
        message = f"job {info.id} expired: its file was deleted"
        return FailedPreconditionError(grpc.StatusCode.FAILED_PRECONDITION, message, None)
    if info.error is not None:
        code = grpc.StatusCode.__members__.get(info.error.code, grpc.StatusCode.UNKNOWN)
        return ERROR_BY_CODE.get(code, InternalError)(code, info.error.message, info.request_id)
    message = f"job {info.id} is {info.state.value}"
    return InternalError(grpc.StatusCode.UNKNOWN, message, info.request_id)


def dropped(request_id: str) -> UnavailableError:
    message = "the job's stream ended before its final event"
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, message, request_id)


def integrity(info: JobInfo) -> IntegrityError:
    message = f"the downloaded file is not job {info.id}'s (size or sha256)"
    return IntegrityError(grpc.StatusCode.DATA_LOSS, message, info.request_id)


def open_for_download(target: Path, resume: bool) -> BinaryIO:
    """The file, read from its start (a partial one, resumed) and written at its end."""
    if resume and target.is_file():
        return target.open("r+b")
    target.write_bytes(b"")
    return target.open("r+b")
