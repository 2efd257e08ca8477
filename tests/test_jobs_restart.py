"""Jobs across a server crash: real `python -m genserve.server` processes, SIGKILLed
mid-run and started again on the same job store and artifacts."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import av
import grpc
import pytest

from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.provenance.spec import ProvenanceSpec
from genserve.v1 import jobs_pb2, jobs_pb2_grpc, video_pb2, video_pb2_grpc
from tests.media_calls import TEST_CHUNK_SIZE, collect, png_bytes
from tests.server_thread import MODEL_STORE
from tests.test_load_shutdown import free_port, wait_serving
from tests.test_worker_process import _toml

pytestmark = pytest.mark.timeout(600)

STEPS = 8  # long enough that a kill at step 2 lands mid-run


@contextmanager
def server_process(
    data_dir: Path,
    port: int,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    provenance: str = "on",
) -> Iterator[subprocess.Popen[bytes]]:
    """`provenance = "off"` where a job's file is compared with a direct Generate's: a
    generation record holds the request id, which differs between the two calls."""
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = data_dir / "video.toml"
    if not manifest.exists():
        # No wall-time admission: it learns the model's speed on this shared machine,
        # and under load refuses the 8-step runs these tests are about.
        videos = [
            entry.model_copy(
                update={
                    "provenance": ProvenanceSpec.model_validate(provenance),
                    "limits": entry.limits.model_copy(update={"max_request_s": None}),
                }
            )
            for entry in load_manifest(manifest_path("tiny")).video
        ]
        manifest.write_text(_toml(Manifest(video=videos)))
    command = [
        sys.executable, "-m", "genserve.server", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--data-dir", str(data_dir), "--model-store", str(MODEL_STORE),
        "--manifest", str(manifest), "--media.chunk-size", str(TEST_CHUNK_SIZE),
        "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    environment = None if env is None else {**os.environ, **env}
    with (data_dir / "server.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


@contextmanager
def jobs_stub(
    port: int, process: subprocess.Popen[bytes]
) -> Iterator[jobs_pb2_grpc.JobServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, process)
        yield jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        channel.close()


def video_request() -> video_pb2.VideoGenerateRequest:
    return video_pb2.VideoGenerateRequest(image=png_bytes(), num_inference_steps=STEPS)


def watched_bytes(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, offset: int
) -> tuple[bytes, str]:
    result = collect(
        stub.Watch(jobs_pb2.WatchJobRequest(id=job_id, from_offset=offset), timeout=300)
    )
    assert result.final is not None
    if result.chunks:
        assert result.chunks[0].offset == offset
    return result.data, result.final.sha256


def frame_count(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4), mode="r") as container:
        return sum(1 for _ in container.decode(video=0))


def wait_finished(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> jobs_pb2.Job:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=10)
        if job.state not in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def as_if_cut_at(jobs_db: Path, job_id: str, offset: int) -> None:
    """The rows a crash in the middle of writing the file leaves: running, `offset`
    bytes counted. (A kill cannot be timed into the ~20 ms in which a tiny video's
    chunks are written, so the crash state is set on the stopped server's store.)"""
    with sqlite3.connect(jobs_db) as db:
        db.execute(
            "UPDATE jobs SET state = 'running', bytes_written = ?, final = NULL WHERE id = ?",
            (offset, job_id),
        )


def test_a_job_killed_mid_run_runs_again_and_makes_the_same_file(tmp_path: Path) -> None:
    port = free_port()
    seen: list[str] = []
    with (
        server_process(tmp_path, port, provenance="off") as first,
        jobs_stub(port, first) as stub,
    ):
        job = stub.Submit(jobs_pb2.SubmitJobRequest(video=video_request()), timeout=30)

        def watch_until_killed() -> None:
            try:
                for event in stub.Watch(jobs_pb2.WatchJobRequest(id=job.id), timeout=300):
                    seen.append(event.WhichOneof("event") or "")
                    if event.HasField("progress") and event.progress.step >= 2:
                        first.send_signal(signal.SIGKILL)
            except grpc.RpcError as error:
                seen.append(error.code().name)

        watcher = threading.Thread(target=watch_until_killed)
        watcher.start()
        watcher.join(300)
        first.wait(30)
    assert seen[0] == "header" and "progress" in seen and "final" not in seen, seen
    assert seen[-1] == "UNAVAILABLE", seen

    with server_process(tmp_path, port) as second, jobs_stub(port, second) as stub:
        data, sha256 = watched_bytes(stub, job.id, 0)  # re-attached: the header was all it had
        done = wait_finished(stub, job.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert done.attempts == 2 and done.seed == job.seed
        assert hashlib.sha256(data).hexdigest() == sha256 == done.final.sha256
        assert done.final.total_bytes == len(data)
        assert frame_count(data) == 25
        direct = collect(
            video_pb2_grpc.VideoServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}")).Generate(
                video_pb2.VideoGenerateRequest(
                    image=png_bytes(), num_inference_steps=STEPS, seed=job.seed
                ),
                timeout=300,
            )
        )
        assert direct.sha256 == sha256  # a job is the same bytes as a direct Generate
        second.send_signal(signal.SIGKILL)

    # Re-run while a watcher had read `cut` bytes: it continues at `cut`, and gets the rest.
    cut = len(data) // 2
    as_if_cut_at(tmp_path / "jobs" / "jobs.sqlite3", job.id, cut)
    with server_process(tmp_path, port) as third, jobs_stub(port, third) as stub:
        rest, sha256_again = watched_bytes(stub, job.id, cut)
        assert rest == data[cut:] and sha256_again == sha256
        again = wait_finished(stub, job.id)
        assert again.attempts == 3 and again.final.sha256 == sha256


def test_a_rerun_that_makes_other_bytes_is_never_spliced(tmp_path: Path) -> None:
    """Bytes on disk that the re-run does not reproduce (here, one flipped): a watcher who
    had read past them gets ABORTED and reads again from 0; the file is the re-run's. With
    the generation record in the file, which the re-run writes again the same (the job's
    request id and time), every other byte is as the first run made it."""
    port = free_port()
    with server_process(tmp_path, port) as first, jobs_stub(port, first) as stub:
        job = stub.Submit(jobs_pb2.SubmitJobRequest(video=video_request()), timeout=30)
        data, sha256 = watched_bytes(stub, job.id, 0)
        first.send_signal(signal.SIGKILL)

    artifact = tmp_path / "jobs" / "artifacts" / job.id
    flipped = len(data) // 3
    stored = bytearray(artifact.read_bytes())
    stored[flipped] ^= 0xFF
    artifact.write_bytes(bytes(stored))
    as_if_cut_at(tmp_path / "jobs" / "jobs.sqlite3", job.id, len(data) // 2)

    with server_process(tmp_path, port) as second, jobs_stub(port, second) as stub:
        with pytest.raises(grpc.RpcError) as refused:
            watched_bytes(stub, job.id, len(data) // 2)
        assert refused.value.code() is grpc.StatusCode.ABORTED
        assert "read it again from 0" in (refused.value.details() or "")
        again, sha256_again = watched_bytes(stub, job.id, 0)
        assert again == data and sha256_again == sha256
        assert artifact.read_bytes() == data
