"""The SDK's jobs: the re-attach cursor without I/O, both transports against a stand-in
JobService that breaks on cue (tests/fake_jobs.py), then a real server."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from genserve.client import (
    AsyncGenServe,
    GenServe,
    IntegrityError,
    InternalError,
    NotFoundError,
    RequestCancelledError,
    defaults,
)
from genserve.client.job_cursor import MAX_RESTARTS, Action, JobCursor, Restarted
from genserve.client.job_info import (
    JobState,
    job_from_pb,
    list_request,
    submit_request,
)
from genserve.client.jobs import Job
from genserve.contract.events import Chunk, Final, Header, Progress
from genserve.contract.modalities.image import IMAGE
from genserve.v1 import jobs_pb2
from tests.fake_jobs import CHUNK, DATA, JOB_ID, RERUN, Cut, FakeJobs
from tests.jobs_setup import start_jobs_server
from tests.media_calls import TEST_CHUNK_SIZE
from tests.server_thread import ServerThread

HEADER = Header("image/png", "x.png", 64, 64)
SHA = hashlib.sha256(DATA).hexdigest()
UNAVAILABLE, ABORTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED
TRANSPORTS = ("sync", "async")


def final_of(data: bytes) -> Final:
    return Final(len(data), hashlib.sha256(data).hexdigest(), 0, 0, 0, seed=7)


def chunks(data: bytes, start: int = 0, size: int = CHUNK) -> list[Chunk]:
    return [Chunk(data[i : i + size], i) for i in range(start, len(data), size)]


# -- the cursor, without I/O ------------------------------------------------------------


def test_the_cursor_follows_offsets_and_checks_the_final() -> None:
    cursor = JobCursor()
    progress = Progress(1, 2, "denoising")
    assert cursor.feed(HEADER) == HEADER and cursor.feed(progress) == progress
    received = [cursor.feed(chunk) for chunk in chunks(DATA)]
    assert b"".join(c.data for c in received if isinstance(c, Chunk)) == DATA
    assert cursor.offset == len(DATA) and not cursor.done
    assert cursor.feed(final_of(DATA)) == final_of(DATA) and cursor.done
    assert cursor.on_end() is None


def test_a_reattached_stream_drops_what_it_replays() -> None:
    cursor = JobCursor()
    progress = Progress(1, 2, "denoising")
    cursor.feed(HEADER)
    cursor.feed(progress)
    for chunk in chunks(DATA)[:2]:
        cursor.feed(chunk)
    step = cursor.on_error(UNAVAILABLE)
    assert step.action is Action.CHECK and step.delay_s > 0 and step.restarted is None
    assert cursor.offset == 2 * CHUNK  # the next Watch's from_offset
    # The re-attached stream: the header and the last progress again, then bytes that
    # overlap what came (a server may resend from a chunk boundary): cut to the new ones.
    assert cursor.feed(HEADER) is None and cursor.feed(progress) is None
    assert cursor.feed(Chunk(DATA[:CHUNK], 0)) is None
    overlap = cursor.feed(Chunk(DATA[CHUNK + 2 : 3 * CHUNK + 1], CHUNK + 2))
    assert overlap == Chunk(DATA[2 * CHUNK : 3 * CHUNK + 1], 2 * CHUNK)
    for chunk in chunks(DATA, 3 * CHUNK + 1):
        cursor.feed(chunk)
    cursor.feed(final_of(DATA))  # the digest spans both streams: no IntegrityError
    assert cursor.feed(Progress(2, 2, "denoising")) is not None  # a new one passes


def test_a_gap_or_a_wrong_file_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="at byte 5; the next byte due is 0"):
        JobCursor().feed(Chunk(b"x", 5))
    cursor = JobCursor()
    cursor.feed(Chunk(b"other bytes", 0))
    with pytest.raises(IntegrityError, match="sha256"):
        cursor.finish(final_of(b"other bytez"))
    with pytest.raises(IntegrityError, match="received 11 bytes"):
        cursor.finish(final_of(DATA))


def test_a_cursor_from_an_offset_checks_the_size_only() -> None:
    cursor = JobCursor(10)
    for chunk in chunks(DATA, 10):
        cursor.feed(chunk)
    cursor.finish(final_of(DATA))  # no sha256 without bytes 0..10
    prefixed = JobCursor(prefix_is_local=True)
    prefixed.feed_prefix(DATA[:7])
    prefixed.feed_prefix(DATA[7:10])
    for chunk in chunks(DATA, 10):
        prefixed.feed(chunk)
    prefixed.finish(final_of(DATA))
    wrong = JobCursor(prefix_is_local=True)
    wrong.feed_prefix(b"x" * 10)
    for chunk in chunks(DATA, 10):
        wrong.feed(chunk)
    with pytest.raises(IntegrityError):
        wrong.finish(final_of(DATA))


def test_aborted_starts_again_from_zero_and_says_so() -> None:
    cursor = JobCursor()
    cursor.feed(HEADER)
    for chunk in chunks(DATA)[:3]:
        cursor.feed(chunk)
    step = cursor.on_error(ABORTED)
    assert step.action is Action.REATTACH and step.delay_s == 0
    assert step.restarted == Restarted(discarded_bytes=3 * CHUNK)
    assert cursor.offset == 0
    assert cursor.feed(HEADER) == HEADER  # the new run's header is shown
    for chunk in chunks(RERUN):
        cursor.feed(chunk)
    cursor.finish(final_of(RERUN))
    for _ in range(MAX_RESTARTS - 1):
        assert cursor.on_error(ABORTED).restarted is not None
    assert cursor.on_error(ABORTED).action is Action.RAISE


def test_failures_in_a_row_give_up_new_bytes_reset_the_count() -> None:
    cursor = JobCursor(max_failures=2)
    delays = [cursor.on_error(UNAVAILABLE).delay_s for _ in range(2)]
    assert delays[1] > delays[0]  # backoff
    assert cursor.on_error(UNAVAILABLE).action is Action.RAISE
    cursor.feed(Chunk(b"new", 0))
    assert cursor.on_error(UNAVAILABLE).action is Action.CHECK
    assert cursor.on_end() is not None  # ended without its final: dropped, re-attach
    assert cursor.on_error(grpc.StatusCode.INVALID_ARGUMENT).action is Action.RAISE


def test_out_of_range_restarts_only_a_local_prefix() -> None:
    local = JobCursor(prefix_is_local=True)
    local.feed_prefix(b"a longer file than the job's")
    assert local.on_error(grpc.StatusCode.OUT_OF_RANGE).restarted is not None
    asked = JobCursor(1000)
    assert asked.on_error(grpc.StatusCode.OUT_OF_RANGE).action is Action.RAISE


# -- requests and replies, without I/O ---------------------------------------------------


def test_submit_builds_the_modalitys_request() -> None:
    request = submit_request("text-to-image", ("a room",), {"width": 64}, "key-1", 90.5)
    assert request.WhichOneof("request") == "image"
    assert request.image.prompt == "a room" and request.image.width == 64
    assert (request.idempotency_key, request.ttl_s) == ("key-1", 91)
    assert submit_request(IMAGE, (), {"format": "webp"}, None, None).ttl_s == 0
    with pytest.raises(TypeError, match="text does not run as a job"):
        submit_request("text", ("hi",), {}, None, None)
    with pytest.raises(TypeError, match="no field 'steps'"):
        submit_request("image", (), {"steps": 2}, None, None)


def test_a_job_reply_is_plain_data() -> None:
    fake = FakeJobs()
    info = job_from_pb(fake.job())
    assert info.state is JobState.SUCCEEDED and info.finished
    assert info.final is not None and info.final.sha256 == SHA
    assert info.header is not None and info.header.file_name == f"{JOB_ID}.png"
    assert info.progress == Progress(2, 2, "denoising") and info.error is None
    queued = job_from_pb(jobs_pb2.Job(id="q", state=jobs_pb2.JOB_STATE_QUEUED))
    assert queued.state is JobState.QUEUED and not queued.finished
    assert queued.final is None and queued.header is None and queued.progress is None
    assert list_request("running", 0, "").state == jobs_pb2.JOB_STATE_RUNNING
    with pytest.raises(ValueError):
        list_request("sleeping", 0, "")


# -- both transports against the stand-in -----------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJobs]:
    monkeypatch.setattr(defaults, "RETRY_BACKOFF_S", 0.01)  # re-attaches: no naps
    server = FakeJobs().start()
    yield server
    server.stop()


def on(transport: str, target: str, scenario: Any) -> Any:
    """scenario(job) with a Job (sync) or an AsyncJob (async, awaited)."""
    if transport == "sync":
        with GenServe(target) as gs:
            return scenario(gs.job(JOB_ID))

    async def run() -> Any:
        async with AsyncGenServe(target) as gs:
            result = scenario(await gs.job(JOB_ID))
            return await result if asyncio.iscoroutine(result) else result

    return asyncio.run(run())


def watched(transport: str, target: str) -> list[Any]:
    if transport == "sync":
        return on(transport, target, lambda job: list(job.watch()))

    async def collect(job: Any) -> list[Any]:
        return [event async for event in job.watch()]

    return on(transport, target, collect)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_watch_reattaches_from_its_offset(fake: FakeJobs, transport: str) -> None:
    fake.cuts = [Cut(UNAVAILABLE, after=2), Cut(UNAVAILABLE, after=3)]
    events = watched(transport, fake.target)
    assert fake.watch_offsets == [0, 2 * CHUNK, 5 * CHUNK]
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("Header") == 1 and kinds.count("Progress") == 1  # not replayed
    assert b"".join(e.data for e in events if isinstance(e, Chunk)) == DATA
    assert events[-1] == Final(len(DATA), SHA, 0, 0, 0, seed=7)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_watch_starts_again_when_the_job_restarted(fake: FakeJobs, transport: str) -> None:
    fake.cuts = [Cut(UNAVAILABLE, after=2)]
    fake.rerun_after_first_cut = True  # the re-attach at byte 10 gets ABORTED
    events = watched(transport, fake.target)
    assert fake.watch_offsets == [0, 2 * CHUNK, 0]
    (restart,) = (i for i, e in enumerate(events) if isinstance(e, Restarted))
    assert events[restart] == Restarted(discarded_bytes=2 * CHUNK)
    after = b"".join(e.data for e in events[restart:] if isinstance(e, Chunk))
    assert after == RERUN and isinstance(events[restart + 1], Header)
    assert events[-1].sha256 == hashlib.sha256(RERUN).hexdigest()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_download_resumes_a_partial_file(fake: FakeJobs, transport: str, tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(DATA[:12])
    fake.cuts = [Cut(UNAVAILABLE, after=2)]
    seen: list[int] = []
    path = on(transport, fake.target, lambda job: job.download(target, on_bytes=seen.append))
    assert path == target and target.read_bytes() == DATA
    assert fake.download_offsets == [12, 12 + 2 * CHUNK]
    assert seen[0] == 12 and seen[-1] == len(DATA)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_download_without_resume_and_into_a_folder(
    fake: FakeJobs, transport: str, tmp_path: Path
) -> None:
    (tmp_path / f"{JOB_ID}.png").write_bytes(b"stale")
    path = on(transport, fake.target, lambda job: job.download(tmp_path, resume=False))
    assert path == tmp_path / f"{JOB_ID}.png" and path.read_bytes() == DATA
    assert fake.download_offsets == [0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_partial_file_of_another_run_is_downloaded_again(
    fake: FakeJobs, transport: str, tmp_path: Path
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"X" * 12)  # the first bytes of some other file
    on(transport, fake.target, lambda job: job.download(target))
    assert target.read_bytes() == DATA and fake.download_offsets == [12, 0]
    target.write_bytes(DATA + b"more")  # longer than the job's file: from 0, no need to ask
    on(transport, fake.target, lambda job: job.download(target))
    assert target.read_bytes() == DATA and fake.download_offsets[2:] == [0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_download_restarts_when_the_job_restarted(
    fake: FakeJobs, transport: str, tmp_path: Path
) -> None:
    fake.cuts = [Cut(UNAVAILABLE, after=2)]
    fake.rerun_after_first_cut = True
    seen: list[int] = []
    target = tmp_path / "out.png"
    on(transport, fake.target, lambda job: job.download(target, on_bytes=seen.append))
    assert target.read_bytes() == RERUN and fake.download_offsets == [0, 2 * CHUNK, 0]
    assert 0 in seen[1:]  # the consumer was told the file starts again


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wait_raises_the_jobs_own_error(fake: FakeJobs, transport: str) -> None:
    assert on(transport, fake.target, lambda job: job.wait()).state is JobState.SUCCEEDED
    fake.state = jobs_pb2.JOB_STATE_FAILED
    fake.error = ("INTERNAL", "the engine broke")
    with pytest.raises(InternalError, match="the engine broke"):
        on(transport, fake.target, lambda job: job.wait())
    fake.state, fake.error = jobs_pb2.JOB_STATE_RUNNING, ("INTERNAL", "the engine broke")
    with pytest.raises(InternalError, match="failed: the engine broke"):  # from Watch
        on(transport, fake.target, lambda job: job.wait())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cancelled_job_ends_its_watch(fake: FakeJobs, transport: str) -> None:
    fake.state = jobs_pb2.JOB_STATE_RUNNING
    fake.cuts = [Cut(grpc.StatusCode.CANCELLED, after=1)]  # this call, not the job: again
    assert isinstance(watched(transport, fake.target)[-1], Final)
    assert fake.watch_offsets == [0, CHUNK]
    fake.state = jobs_pb2.JOB_STATE_CANCELLED
    with pytest.raises(RequestCancelledError, match="cancelled"):
        watched(transport, fake.target)
    assert fake.watch_offsets[-1] == 0


def test_submit_list_cancel_delete(fake: FakeJobs) -> None:
    with GenServe(fake.target) as gs:
        job = gs.submit("image", "a room", num_inference_steps=2, idempotency_key="k", ttl_s=60)
        assert isinstance(job, Job) and job.id == "job-k" and job.info.state is JobState.QUEUED
        (sent,) = fake.submitted
        assert sent.image.prompt == "a room" and sent.image.num_inference_steps == 2
        assert (sent.idempotency_key, sent.ttl_s) == ("k", 60)
        assert [j.id for j in gs.jobs(page_size=2)] == [f"job-{n}" for n in range(5)]
        assert [r.page_token for r in fake.listed] == ["", "2", "4"]
        assert next(iter(gs.jobs(state=JobState.RUNNING, page_size=9))).info.model == "tiny-sd"
        assert fake.listed[-1].state == jobs_pb2.JOB_STATE_RUNNING
        with pytest.raises(NotFoundError):
            gs.job("nope")
        job = gs.job(JOB_ID)
        assert job.cancel().state is JobState.CANCELLED and job.info.state is JobState.CANCELLED
        assert job.delete() is True

    async def scenario() -> None:
        async with AsyncGenServe(fake.target) as gs:
            job = await gs.submit("mesh", "a chair")
            assert job.id == "job-2" and fake.submitted[-1].WhichOneof("request") == "mesh"
            assert [j.id async for j in gs.jobs(page_size=3)] == [f"job-{n}" for n in range(5)]
            assert (await (await gs.job(JOB_ID)).cancel()).state is JobState.CANCELLED

    asyncio.run(scenario())


# -- a real server ----------------------------------------------------------------------

STEPS = 2


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    server = start_jobs_server(tmp_path_factory.mktemp("jobs-server"))
    yield server
    server.stop()


@pytest.fixture
def gs(jobs_server: ServerThread) -> Iterator[GenServe]:
    with GenServe(f"localhost:{jobs_server.port}") as client:
        yield client


def test_submit_wait_download_a_png(gs: GenServe, tmp_path: Path) -> None:
    job = gs.submit("image", "a cozy room", num_inference_steps=STEPS, seed=3)
    assert job.info.state in (JobState.QUEUED, JobState.RUNNING) and job.info.seed == 3
    steps: list[Progress] = []
    info = job.wait(timeout=120, on_progress=steps.append)
    assert info.state is JobState.SUCCEEDED and info.final is not None
    assert info.bytes_written == info.final.total_bytes
    path = job.download(tmp_path / "room.png")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == info.final.sha256
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    into_folder = job.download(tmp_path)
    assert info.header is not None and into_folder.name == info.header.file_name
    assert into_folder.read_bytes() == data


def test_a_download_cut_halfway_resumes_to_the_same_file(gs: GenServe, tmp_path: Path) -> None:
    job = gs.submit("image", "a chair", num_inference_steps=STEPS)
    info = job.wait(timeout=120)
    assert info.final is not None and info.final.total_bytes > 2 * TEST_CHUNK_SIZE
    whole = job.download(tmp_path / "whole.png").read_bytes()
    half = tmp_path / "half.png"
    half.write_bytes(whole[: len(whole) // 2])
    seen: list[int] = []
    job.download(half, resume=True, on_bytes=seen.append)
    assert seen[0] == len(whole) // 2  # resumed, not started again
    assert hashlib.sha256(half.read_bytes()).hexdigest() == info.final.sha256
    # A watch stopped halfway and picked up from its offset gives the same bytes.
    received = bytearray()
    for event in job.watch():
        if isinstance(event, Chunk):
            received += event.data
            if len(received) >= TEST_CHUNK_SIZE:
                break
    rest = [e for e in job.watch(from_offset=len(received)) if isinstance(e, Chunk)]
    assert bytes(received) + b"".join(e.data for e in rest) == whole


def test_a_download_follows_a_job_still_queued(gs: GenServe, tmp_path: Path) -> None:
    job = gs.submit("image", "a window", num_inference_steps=STEPS, format="webp")
    path = job.download(tmp_path)  # a folder: the header's file name, from a Watch
    info = job.refresh()
    assert info.final is not None and info.header is not None
    assert path == tmp_path / info.header.file_name and path.suffix == ".webp"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info.final.sha256
    assert Image.open(path).format == "WEBP"


def test_the_idempotency_key_returns_the_same_job(gs: GenServe) -> None:
    first = gs.submit("image", "a lamp", num_inference_steps=STEPS, idempotency_key="lamp-1")
    again = gs.submit("image", "a lamp", num_inference_steps=STEPS, idempotency_key="lamp-1")
    other = gs.submit("image", "a lamp", num_inference_steps=STEPS, idempotency_key="lamp-2")
    assert again.id == first.id != other.id
    assert again.info.idempotency_key == "lamp-1"
    ids = [j.id for j in gs.jobs()]
    assert first.id in ids and other.id in ids and ids.count(first.id) == 1
    assert other.wait(timeout=120).state is JobState.SUCCEEDED
    assert first.wait(timeout=120).state is JobState.SUCCEEDED


def test_cancel_delete_and_list_by_state(gs: GenServe) -> None:
    job = gs.submit("image", "a long one", num_inference_steps=50)
    cancelled = job.cancel()
    assert cancelled.state is JobState.CANCELLED
    with pytest.raises(RequestCancelledError):
        job.wait(timeout=60)
    assert job.id in [j.id for j in gs.jobs(state="cancelled")]
    assert job.id not in [j.id for j in gs.jobs(state="succeeded")]
    assert job.delete() is True
    with pytest.raises(NotFoundError):
        job.refresh()


def test_the_async_client_runs_a_job(jobs_server: ServerThread, tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, bytes]:
        async with AsyncGenServe(f"localhost:{jobs_server.port}") as gs:
            job = await gs.submit("image", "a desk", num_inference_steps=STEPS)
            info = await job.wait(timeout=120)
            events = [e async for e in job.watch()]
            assert isinstance(events[0], Header) and isinstance(events[-1], Final)
            path = await job.download(tmp_path / "desk.png")
            return info, path.read_bytes()

    info, data = asyncio.run(scenario())
    assert hashlib.sha256(data).hexdigest() == info.final.sha256
    Image.open(io.BytesIO(data)).verify()
