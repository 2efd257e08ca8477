"""Jobs on several edges: two real server processes share a PostgreSQL job store and an
S3-compatible artifact store (moto's standalone server). A job submitted to one is
watched, downloaded and cancelled through the other; when the first is killed, the
second takes the job over once its lease runs out and finishes it."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from genserve.v1 import jobs_pb2, jobs_pb2_grpc, video_pb2, video_pb2_grpc
from tests.media_calls import collect, png_bytes
from tests.postgres_server import postgres
from tests.s3_server import CREDENTIALS, S3Server, s3_server
from tests.test_jobs_restart import (
    STEPS,
    frame_count,
    jobs_stub,
    server_process,
    video_request,
    wait_finished,
    watched_bytes,
)
from tests.test_load_shutdown import free_port

pytestmark = pytest.mark.timeout(900)

LEASE_S = 3.0  # short, so that the take-over test waits seconds, not the default 15


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, S3Server]]:
    with (
        postgres() as url,
        s3_server(tmp_path_factory.mktemp("s3")) as s3,
    ):
        yield url, s3


@contextmanager
def edges(
    root: Path, shared: tuple[str, S3Server], prefix: str, provenance: str = "on"
) -> Iterator[list[tuple[jobs_pb2_grpc.JobServiceStub, object, int]]]:
    """Two servers on the same stores, each with its own data directory."""
    url, s3 = shared
    args = [
        "--jobs.store-url", url, "--jobs.artifacts-url", f"s3://{s3.bucket}/{prefix}",
        "--jobs.s3-endpoint", s3.endpoint, "--jobs.lease-s", str(LEASE_S),
        "--jobs.poll-s", "0.2",
    ]  # fmt: skip
    with ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            port = free_port()
            process = stack.enter_context(
                server_process(root / name, port, args, CREDENTIALS, provenance)
            )
            servers.append((port, process))
        yield [
            (stack.enter_context(jobs_stub(port, process)), process, port)
            for port, process in servers
        ]


def wait_running(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, step: int) -> jobs_pb2.Job:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=10)
        if job.state == jobs_pb2.JOB_STATE_RUNNING and job.progress.step >= step:
            return job
        assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING), job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def wait_attempt(stub: jobs_pb2_grpc.JobServiceStub, job_id: str, attempt: int) -> float:
    """When the job's `attempt`-th run started, as seen by polling (monotonic time)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=10).attempts >= attempt:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_a_job_submitted_to_one_server_is_watched_downloaded_and_cancelled_through_another(
    tmp_path: Path, shared: tuple[str, S3Server]
) -> None:
    with edges(tmp_path, shared, "watch") as [(a, _, _), (b, _, _)]:
        job = a.Submit(jobs_pb2.SubmitJobRequest(video=video_request()), timeout=30)
        data, sha256 = watched_bytes(b, job.id, 0)  # live, through the server not running it
        assert hashlib.sha256(data).hexdigest() == sha256
        assert frame_count(data) == 25
        done = b.Get(jobs_pb2.GetJobRequest(id=job.id), timeout=10)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED and done.final.sha256 == sha256
        middle = len(data) // 3
        part = b"".join(
            c.data
            for c in b.Download(
                jobs_pb2.DownloadJobRequest(id=job.id, offset=middle, length=1000), timeout=30
            )
        )
        assert part == data[middle : middle + 1000]
        _, s3 = shared
        assert any(key.startswith(f"watch/{job.id}/") for key in s3.keys("watch/"))

        # A cancel through B reaches the run on A, which stops at its next step.
        running = a.Submit(jobs_pb2.SubmitJobRequest(video=video_request()), timeout=30)
        wait_running(b, running.id, 1)
        cancelled = b.Cancel(jobs_pb2.CancelJobRequest(id=running.id), timeout=60)
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED, cancelled
        assert cancelled.progress.step < STEPS
        seen = a.Get(jobs_pb2.GetJobRequest(id=running.id), timeout=10)
        assert seen.state == jobs_pb2.JOB_STATE_CANCELLED
        assert not [key for key in s3.keys(f"watch/{running.id}/")]  # its partial file went


def test_killing_the_server_that_runs_a_job_leaves_it_to_the_other_to_finish(
    tmp_path: Path, shared: tuple[str, S3Server]
) -> None:
    # provenance off: the file is compared with a direct Generate's, whose request id
    # (in the generation record) differs
    with edges(tmp_path, shared, "takeover", "off") as [(a, first, _), (b, _, b_port)]:
        job = a.Submit(jobs_pb2.SubmitJobRequest(video=video_request()), timeout=30)
        wait_running(b, job.id, 2)
        first.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        killed_at = time.monotonic()
        taken_over = wait_attempt(b, job.id, 2)

        # A watcher on B, attached before the kill was noticed, is never interrupted.
        watched: list[tuple[bytes, str]] = []
        watcher = threading.Thread(target=lambda: watched.append(watched_bytes(b, job.id, 0)))
        watcher.start()
        done = wait_finished(b, job.id)
        watcher.join(300)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done
        assert done.attempts == 2 and done.seed == job.seed
        # Not before A's lease ran out: A renewed it at most LEASE_S / 3 before the kill.
        assert taken_over - killed_at >= LEASE_S * 2 / 3
        data, sha256 = watched[0]
        assert sha256 == done.final.sha256 == hashlib.sha256(data).hexdigest()
        assert frame_count(data) == 25
        direct = collect(
            video_pb2_grpc.VideoServiceStub(grpc.insecure_channel(f"127.0.0.1:{b_port}")).Generate(
                video_pb2.VideoGenerateRequest(
                    image=png_bytes(), num_inference_steps=STEPS, seed=job.seed
                ),
                timeout=300,
            )
        )
        assert direct.sha256 == sha256  # the taken-over job made a direct Generate's bytes
