"""The JobService end to end: real servers, real stores, the generated stubs; every file
parsed back."""

from __future__ import annotations

import hashlib
import io
import itertools
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

import grpc
import httpx
import numpy as np
import open3d
import pytest
import soundfile
from PIL import Image

from genserve.server.jobs.settings import JobSettings
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from genserve.v1 import (
    audio_pb2,
    image_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    mesh_pb2,
    video_pb2,
)
from tests.auth_setup import auth_server, make_keys
from tests.media_calls import TEST_CHUNK_SIZE, MediaResult, collect, png_bytes
from tests.server_thread import ServerThread, make_settings, settled_stats, wait_until
from tests.test_jobs_restart import frame_count

Stub: TypeAlias = jobs_pb2_grpc.JobServiceStub
FINISHED = (
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_CANCELLED,
    jobs_pb2.JOB_STATE_EXPIRED,
)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Stub:
    return jobs_pb2_grpc.JobServiceStub(channel)


def image_job(**fields: object) -> jobs_pb2.SubmitJobRequest:
    request = image_pb2.ImageGenerateRequest(prompt="a lighthouse", num_inference_steps=3)
    return jobs_pb2.SubmitJobRequest(image=request, **fields)  # type: ignore[arg-type]


def video_job(steps: int = 4) -> jobs_pb2.SubmitJobRequest:
    request = video_pb2.VideoGenerateRequest(image=png_bytes(), num_inference_steps=steps)
    return jobs_pb2.SubmitJobRequest(video=request)


def wait_finished(
    stub: Stub, job_id: str, metadata: tuple[tuple[str, str], ...] = ()
) -> jobs_pb2.Job:
    def finished() -> jobs_pb2.Job | None:
        job = stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=10, metadata=metadata)
        return job if job.state in FINISHED else None

    return wait_until(finished, 300)


def watch(stub: Stub, job_id: str, offset: int = 0, **kwargs: object) -> MediaResult:
    request = jobs_pb2.WatchJobRequest(id=job_id, from_offset=offset)
    return collect(stub.Watch(request, timeout=300, **kwargs))  # type: ignore[arg-type]


def download(stub: Stub, job_id: str, offset: int = 0, length: int = 0, **kwargs: object) -> bytes:
    request = jobs_pb2.DownloadJobRequest(id=job_id, offset=offset, length=length)
    chunks = list(stub.Download(request, timeout=300, **kwargs))  # type: ignore[arg-type]
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.offset == previous.offset + len(previous.data)
    return b"".join(c.data for c in chunks)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        result = call()  # type: ignore[operator]
        if not isinstance(result, jobs_pb2.Job | jobs_pb2.ListJobsResponse):
            list(result)
    return error.value.code()


# -- every media modality, as a job ------------------------------------------------------


def test_every_media_modality_runs_as_a_job_and_its_file_parses(stub: Stub) -> None:
    requests = {
        "image": image_job(),
        "audio": jobs_pb2.SubmitJobRequest(audio=audio_pb2.AudioGenerateRequest(prompt="Hi!")),
        "video": video_job(),
        "mesh": jobs_pb2.SubmitJobRequest(
            mesh=mesh_pb2.MeshGenerateRequest(prompt="a chair", num_inference_steps=4)
        ),
    }
    jobs = {name: stub.Submit(request, timeout=30) for name, request in requests.items()}
    for name, job in jobs.items():
        assert job.modality == name and job.id and job.seed
        assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
    files = {}
    for name, job in jobs.items():
        result = watch(stub, job.id)
        assert result.kinds[0] == "header" and result.kinds[-1] == "final"
        assert result.final is not None and result.final.sha256 == result.sha256
        assert result.final.seed == job.seed
        assert all(len(c.data) <= TEST_CHUNK_SIZE for c in result.chunks)
        assert download(stub, job.id) == result.data
        files[name] = result.data
        done = stub.Get(jobs_pb2.GetJobRequest(id=job.id))
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED and done.attempts == 1
        assert done.bytes_written == len(result.data) and done.final.sha256 == result.sha256
        assert done.started_at >= done.created_at and done.finished_at >= done.started_at
        assert done.expires_at == pytest.approx(done.finished_at + 24 * 3600, abs=1)
    Image.open(io.BytesIO(files["image"])).load()
    samples, rate = soundfile.read(io.BytesIO(files["audio"]))
    assert rate > 0 and len(samples) > 0
    assert frame_count(files["video"]) == 25
    with tempfile.NamedTemporaryFile(suffix=".obj") as obj:
        obj.write(files["mesh"])
        obj.flush()
        mesh = open3d.io.read_triangle_mesh(Path(obj.name))
        assert len(np.asarray(mesh.vertices)) > 0


# -- re-attaching, downloads ---------------------------------------------------------------


def test_a_watcher_cut_at_half_reattaches_and_gets_exactly_the_rest(
    stub: Stub, tiny_server: ServerThread
) -> None:
    engine = tiny_server.server.registry.get("tiny-stable-diffusion").engine
    assert engine is not None
    steps_before = settled_stats(engine).steps
    job = stub.Submit(image_job(), timeout=30)
    head = bytearray()
    events = stub.Watch(jobs_pb2.WatchJobRequest(id=job.id), timeout=300)
    total = None
    for event in events:
        if event.HasField("header"):
            continue
        if event.HasField("chunk"):
            assert event.chunk.offset == len(head)
            head += event.chunk.data
            if total is None:
                total = wait_finished(stub, job.id).final.total_bytes
            if len(head) >= total // 2:
                events.cancel()  # the connection drops at 50 %
                break
    rest = watch(stub, job.id, offset=len(head))
    assert rest.kinds[0] == "header" and rest.chunks[0].offset == len(head)
    whole = bytes(head) + rest.data
    assert rest.final is not None and hashlib.sha256(whole).hexdigest() == rest.final.sha256
    Image.open(io.BytesIO(whole)).load()
    assert settled_stats(engine).steps - steps_before == 3  # computed once: 3 steps
    assert stub.Get(jobs_pb2.GetJobRequest(id=job.id)).attempts == 1


def test_many_watchers_and_a_download_follow_a_running_job(stub: Stub) -> None:
    job = stub.Submit(video_job(), timeout=30)
    results: list[bytes] = []

    def follow() -> None:
        results.append(download(stub, job.id))  # length 0: to the end, as it is written

    threads = [threading.Thread(target=follow) for _ in range(3)]
    for thread in threads:
        thread.start()
    watched = [watch(stub, job.id) for _ in range(2)]
    for thread in threads:
        thread.join(300)
    assert len(results) == 3 and all(r == watched[0].data for r in results)
    assert watched[0].data == watched[1].data
    assert watched[0].progress and watched[0].progress[-1].step == 4


def test_download_ranges_and_offsets_past_the_end(stub: Stub) -> None:
    job = stub.Submit(image_job(), timeout=30)
    whole = watch(stub, job.id).data
    size = len(whole)
    assert download(stub, job.id, 0, 16) == whole[:16]
    assert download(stub, job.id, size // 2, 100) == whole[size // 2 : size // 2 + 100]
    assert download(stub, job.id, size - 10) == whole[-10:]
    assert download(stub, job.id, size - 10, 1000) == whole[-10:]  # a length past the end
    assert download(stub, job.id, size) == b""
    past = jobs_pb2.DownloadJobRequest(id=job.id, offset=size + 1)
    assert code_of(lambda: stub.Download(past)) is grpc.StatusCode.OUT_OF_RANGE
    beyond = jobs_pb2.WatchJobRequest(id=job.id, from_offset=size + 1)
    assert code_of(lambda: stub.Watch(beyond)) is grpc.StatusCode.OUT_OF_RANGE
    at_end = watch(stub, job.id, offset=size)
    assert at_end.kinds == ["header", "progress", "final"]


# -- idempotency, listing --------------------------------------------------------------------


def test_the_same_idempotency_key_returns_the_same_job(stub: Stub) -> None:
    first = stub.Submit(image_job(idempotency_key="render-42"), timeout=30)
    again = stub.Submit(image_job(idempotency_key="render-42"), timeout=30)
    other = stub.Submit(image_job(idempotency_key="render-43"), timeout=30)
    assert again.id == first.id and again.request_id == first.request_id
    assert other.id != first.id
    for job in (first, other):
        wait_finished(stub, job.id)


def test_list_pages_newest_first_and_filters_by_state(stub: Stub) -> None:
    ids = [stub.Submit(image_job(), timeout=30).id for _ in range(3)]
    for job_id in ids:
        wait_finished(stub, job_id)
    first = stub.List(jobs_pb2.ListJobsRequest(page_size=2))
    assert [j.id for j in first.jobs] == ids[::-1][:2] and first.next_page_token
    second = stub.List(jobs_pb2.ListJobsRequest(page_size=2, page_token=first.next_page_token))
    assert second.jobs[0].id == ids[0]
    succeeded = stub.List(
        jobs_pb2.ListJobsRequest(page_size=500, state=jobs_pb2.JOB_STATE_SUCCEEDED)
    )
    assert {j.state for j in succeeded.jobs} == {jobs_pb2.JOB_STATE_SUCCEEDED}
    assert set(ids) <= {j.id for j in succeeded.jobs}
    too_many = jobs_pb2.ListJobsRequest(page_size=501)
    with pytest.raises(grpc.RpcError) as error:
        stub.List(too_many)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (error.value.details() or "") and "500" in (error.value.details() or "")


# -- cancel, delete ------------------------------------------------------------------------


def test_a_cancelled_running_job_stops_within_a_step_and_leaves_no_file(
    stub: Stub, tiny_server: ServerThread
) -> None:
    engine = tiny_server.server.registry.get("tiny-stable-video-diffusion").engine
    assert engine is not None
    before = settled_stats(engine)
    # 8 steps: long enough to cancel at step 2, cheap enough that admission, which learns
    # the model's speed on this (shared, noisy) machine, never refuses it
    job = stub.Submit(video_job(steps=8), timeout=30)
    for event in stub.Watch(jobs_pb2.WatchJobRequest(id=job.id), timeout=300):
        if event.HasField("progress") and event.progress.step >= 2:
            break
    cancelled = stub.Cancel(jobs_pb2.CancelJobRequest(id=job.id), timeout=60)
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert cancelled.error.code == "CANCELLED"
    after = settled_stats(engine)
    assert after.cancelled == before.cancelled + 1
    assert after.steps - before.steps < 8  # stopped, not run out
    artifacts = tiny_server.server.settings.data_dir / "jobs" / "artifacts"
    assert not (artifacts / job.id).exists()
    assert code_of(lambda: stub.Watch(jobs_pb2.WatchJobRequest(id=job.id))) is (
        grpc.StatusCode.CANCELLED
    )
    download_request = jobs_pb2.DownloadJobRequest(id=job.id)
    assert code_of(lambda: stub.Download(download_request)) is (grpc.StatusCode.FAILED_PRECONDITION)


def test_a_queued_job_cancelled_never_runs_and_delete_removes_a_job(stub: Stub) -> None:
    running = stub.Submit(video_job(steps=8), timeout=30)
    queued = stub.Submit(video_job(), timeout=30)
    assert stub.Get(jobs_pb2.GetJobRequest(id=queued.id)).queue_position >= 1
    cancelled = stub.Cancel(jobs_pb2.CancelJobRequest(id=queued.id))
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.attempts == 0
    assert stub.Delete(jobs_pb2.DeleteJobRequest(id=running.id)).deleted
    gone = jobs_pb2.GetJobRequest(id=running.id)
    assert code_of(lambda: stub.Get(gone)) is grpc.StatusCode.NOT_FOUND


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (jobs_pb2.SubmitJobRequest(), "request"),
        (jobs_pb2.SubmitJobRequest(image=image_pb2.ImageGenerateRequest(prompt="")), "prompt"),
        (
            jobs_pb2.SubmitJobRequest(
                image=image_pb2.ImageGenerateRequest(prompt="x", num_inference_steps=0)
            ),
            "num_inference_steps",
        ),
        (image_job(ttl_s=10**8), "ttl_s"),
    ],
)
def test_a_bad_submit_names_the_field(
    stub: Stub, request_: jobs_pb2.SubmitJobRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.Submit(request_, timeout=30)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.value.details() or "")
    assert stub.List(jobs_pb2.ListJobsRequest(page_size=1)) is not None  # still serving


def test_unknown_ids_and_models_are_not_found(stub: Stub) -> None:
    for call in (
        lambda: stub.Get(jobs_pb2.GetJobRequest(id="nope")),
        lambda: stub.Watch(jobs_pb2.WatchJobRequest(id="nope")),
        lambda: stub.Download(jobs_pb2.DownloadJobRequest(id="nope")),
        lambda: stub.Cancel(jobs_pb2.CancelJobRequest(id="nope")),
        lambda: stub.Delete(jobs_pb2.DeleteJobRequest(id="nope")),
    ):
        assert code_of(call) is grpc.StatusCode.NOT_FOUND
    unknown_model = image_pb2.ImageGenerateRequest(prompt="x", model="no-such-model")
    submit = jobs_pb2.SubmitJobRequest(image=unknown_model)
    assert code_of(lambda: stub.Submit(submit)) is grpc.StatusCode.NOT_FOUND


# -- the usage log and metrics --------------------------------------------------------------


def test_usage_rows_join_the_submit_and_the_run_by_job_id(
    stub: Stub, tiny_server: ServerThread
) -> None:
    job = stub.Submit(image_job(), timeout=30)
    done = wait_finished(stub, job.id)
    rows = tiny_server.usage_rows(job.request_id)
    methods = {row["method"]: row for row in rows}
    submit, run = methods["/genserve.v1.JobService/Submit"], methods["/genserve.v1.JobService/Run"]
    assert submit["job_id"] == run["job_id"] == job.id
    assert run["status_code"] == "OK" and run["model"] == "tiny-stable-diffusion"
    assert run["inference_ms"] > 0 and run["bytes_out"] == done.bytes_written > 0
    metrics_port = tiny_server.server.metrics_port
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'genserve_jobs{state="succeeded"}' in scraped
    assert "genserve_job_store_bytes" in scraped and "genserve_job_expiries_total" in scraped


# -- bounded: TTL, quota, queue depth ----------------------------------------------------------


def image_only() -> Manifest:
    return Manifest(image=load_manifest(manifest_path("tiny")).image)


@pytest.fixture
def bounded_server(tmp_path: Path) -> Iterator[ServerThread]:
    jobs = JobSettings(quota_mb=0.01, max_queued_per_model=1, sweep_s=0.2)
    settings = make_settings(tmp_path, jobs=jobs, media=MediaLimits(chunk_size=TEST_CHUNK_SIZE))
    server = ServerThread(settings, image_only()).start()
    yield server
    server.stop()


def test_ttl_expiry_and_the_quota_leave_no_files_behind(bounded_server: ServerThread) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(bounded_server.channel())
    artifacts = bounded_server.server.settings.data_dir / "jobs" / "artifacts"
    job = stub.Submit(image_job(ttl_s=2), timeout=30)
    data = watch(stub, job.id).data
    assert len(data) > 0.01 * 1024 * 1024  # over the quota by itself
    assert (artifacts / job.id).stat().st_size == len(data)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(image_job(), timeout=30)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota" in (refused.value.details() or "")
    assert [p.name for p in artifacts.iterdir()] == [job.id]

    def expired_job() -> jobs_pb2.Job | None:
        current = stub.Get(jobs_pb2.GetJobRequest(id=job.id))
        return current if current.state == jobs_pb2.JOB_STATE_EXPIRED else None

    expired = wait_until(expired_job, 30)
    assert expired.bytes_written == 0 and not list(artifacts.iterdir())
    assert code_of(lambda: stub.Download(jobs_pb2.DownloadJobRequest(id=job.id))) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    again = stub.Submit(image_job(), timeout=30)  # the quota has room again
    wait_finished(stub, again.id)


def test_the_queue_per_model_is_capped(bounded_server: ServerThread) -> None:
    stub = jobs_pb2_grpc.JobServiceStub(bounded_server.channel())
    slow = image_pb2.ImageGenerateRequest(prompt="x", num_inference_steps=30)
    running = stub.Submit(jobs_pb2.SubmitJobRequest(image=slow), timeout=30)
    wait_until(
        lambda: (
            stub.Get(jobs_pb2.GetJobRequest(id=running.id)).state == jobs_pb2.JOB_STATE_RUNNING
            or None
        ),
        30,
    )
    queued = stub.Submit(image_job(), timeout=30)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(image_job(), timeout=30)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queued" in (refused.value.details() or "")
    for job in (running, queued):
        stub.Cancel(jobs_pb2.CancelJobRequest(id=job.id), timeout=60)


# -- owned -----------------------------------------------------------------------------------


def test_a_job_is_its_owners_alone(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    server = auth_server(tmp_path / "var", keys.path, image_only())
    try:
        stub = jobs_pb2_grpc.JobServiceStub(server.channel())
        ops = (("authorization", f"Bearer {keys.ops}"),)
        other = (("authorization", f"Bearer {keys.budgeted}"),)
        submitted = stub.Submit(image_job(idempotency_key="mine"), metadata=ops, timeout=30)
        job = wait_finished(stub, submitted.id, ops)
        for call in (
            lambda m: stub.Get(jobs_pb2.GetJobRequest(id=job.id), metadata=m),
            lambda m: stub.Watch(jobs_pb2.WatchJobRequest(id=job.id), metadata=m),
            lambda m: stub.Download(jobs_pb2.DownloadJobRequest(id=job.id), metadata=m),
            lambda m: stub.Cancel(jobs_pb2.CancelJobRequest(id=job.id), metadata=m),
            lambda m: stub.Delete(jobs_pb2.DeleteJobRequest(id=job.id), metadata=m),
        ):
            assert code_of(lambda c=call: c(other)) is grpc.StatusCode.NOT_FOUND  # type: ignore[misc]
            assert code_of(lambda c=call: c(())) is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[misc]
        assert stub.List(jobs_pb2.ListJobsRequest(), metadata=other).jobs == []
        # The same idempotency key from another caller is another job.
        theirs = stub.Submit(image_job(idempotency_key="mine"), metadata=other, timeout=30)
        assert theirs.id != job.id
        writer = (("authorization", f"Bearer {keys.writer}"),)  # text only
        assert code_of(lambda: stub.Submit(image_job(), metadata=writer)) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert len(download(stub, job.id, metadata=ops)) == job.final.total_bytes > 0
        wait_finished(stub, theirs.id, other)
    finally:
        server.stop()
