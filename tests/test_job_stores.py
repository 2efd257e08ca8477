"""The job store and artifact store contracts, each run against every implementation:
SQLite and a real PostgreSQL; files and a real S3-compatible server (moto)."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from genserve.contract.events import Final, Header, Progress
from genserve.server.jobs.artifacts import ArtifactStore, FileArtifactStore
from genserve.server.jobs.postgres_store import PostgresJobStore
from genserve.server.jobs.records import JobError, JobRecord, JobState
from genserve.server.jobs.settings import JobSettings
from genserve.server.jobs.store import DuplicateJob, JobStore, SqliteJobStore
from genserve.server.jobs.wiring import artifact_store
from tests.postgres_server import postgres
from tests.s3_server import CREDENTIALS, S3Server, s3_server

pytestmark = pytest.mark.timeout(300)
_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    made: JobStore
    if request.param == "sqlite":
        made = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        url = request.getfixturevalue("postgres_url")
        name = f"jobs_{next(_databases)}"  # a database per test: counts start at 0
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        made = PostgresJobStore(url.rsplit("/", 1)[0] + f"/{name}")
    yield made
    made.close()


@pytest.fixture(params=["files", "s3"])
def artifacts(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ArtifactStore:
    if request.param == "files":
        return FileArtifactStore(tmp_path / "artifacts")
    s3: S3Server = request.getfixturevalue("s3")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = JobSettings(
        artifacts_url=f"s3://{s3.bucket}/{secrets.token_hex(4)}", s3_endpoint=s3.endpoint
    )
    return artifact_store(settings, tmp_path)


def a_job(owner: str = "key-a", key: str = "", **changes: object) -> JobRecord:
    job = JobRecord(
        id=secrets.token_hex(16),
        owner=owner,
        modality="video",
        model="tiny-video",
        state=JobState.QUEUED,
        request=b"\x00\x01request\xff",
        seed=2**62 + 7,
        request_id="req-1",
        idempotency_key=key,
        created_at=1000.25,
        ttl_s=60.0,
        expires_at=1060.25,
        lease_owner="node-a",
        lease_until=2000.5,
    )
    return replace(job, **changes)  # type: ignore[arg-type]


# -- the job store ---------------------------------------------------------------------


def test_a_job_comes_back_as_it_went_in(store: JobStore) -> None:
    job = store.insert(a_job())
    assert job.sequence > 0
    assert store.get(job.id) == job
    full = store.update(
        job,
        state=JobState.FAILED,
        header=Header("video/mp4", "clip.mp4", width=64, height=64, num_frames=25, fps=7.0),
        progress=Progress(3, 8, "denoising"),
        final=Final(1234, "ab" * 32, 1.5, 20.25, 3.0, seed=job.seed),
        error=JobError("INTERNAL", "it broke"),
        bytes_written=1234,
        diverged_at=17,
        cancel_requested=True,
    )
    assert store.get(job.id) == full
    assert store.get("no-such-job") is None


def test_the_same_idempotency_key_is_one_job_per_owner(store: JobStore) -> None:
    first = store.insert(a_job(key="k"))
    with pytest.raises(DuplicateJob):
        store.insert(a_job(key="k"))
    other_owner = store.insert(a_job(owner="key-b", key="k"))
    store.insert(a_job())  # no key: never a duplicate
    store.insert(a_job())
    assert store.by_idempotency_key("key-a", "k") == first
    assert store.by_idempotency_key("key-b", "k") == other_owner
    assert store.by_idempotency_key("key-a", "other") is None


def test_update_if_changes_only_a_row_that_still_holds_what_was_expected(
    store: JobStore,
) -> None:
    job = store.insert(a_job())
    claimed = store.update_if(job, {"state": JobState.QUEUED}, state=JobState.RUNNING)
    assert claimed is not None and claimed.state is JobState.RUNNING
    assert store.update_if(job, {"state": JobState.QUEUED}, state=JobState.RUNNING) is None
    taken = store.update_if(
        job,
        {"lease_owner": "node-a", "lease_until": 2000.5},
        lease_owner="node-b",
        lease_until=3000.0,
    )
    assert taken is not None and taken.lease_owner == "node-b"
    again = store.update_if(
        job, {"lease_owner": "node-a", "lease_until": 2000.5}, lease_owner="node-c"
    )
    assert again is None  # the second server to try loses
    assert store.get(job.id) == taken


def test_leases_renew_for_open_jobs_and_run_out_for_a_server_that_stopped(
    store: JobStore,
) -> None:
    mine = store.insert(a_job(lease_owner="node-a", lease_until=100.0))
    running = store.insert(a_job(lease_owner="node-a", lease_until=100.0, state=JobState.RUNNING))
    store.update(running, cancel_requested=True)
    done = store.insert(a_job(lease_owner="node-a", lease_until=100.0, state=JobState.SUCCEEDED))
    theirs = store.insert(a_job(lease_owner="node-b", lease_until=100.0))
    everything = {mine.id, running.id, done.id, theirs.id}
    assert store.renew("node-a", everything, 500.0) == {mine.id: False, running.id: True}
    assert [job.id for job in store.orphans(200.0)] == [theirs.id]
    # Only what the server still queues or runs: a job it dropped is left to run out.
    assert store.renew("node-a", {mine.id}, 900.0) == {mine.id: False}
    assert store.renew("node-a", set(), 900.0) == {}
    assert {job.id for job in store.orphans(600.0)} == {running.id, theirs.id}
    assert {job.id for job in store.orphans(1000.0)} == {mine.id, running.id, theirs.id}


def test_pages_states_expiry_bytes_and_counts(store: JobStore) -> None:
    jobs = [store.insert(a_job()) for _ in range(5)]
    store.insert(a_job(owner="key-b"))
    newest_first = store.page("key-a", None, None, 3)
    assert [j.id for j in newest_first] == [j.id for j in reversed(jobs)][:3]
    rest = store.page("key-a", None, newest_first[-1].sequence, 3)
    assert [j.id for j in rest] == [jobs[1].id, jobs[0].id]
    done = store.update(jobs[0], state=JobState.SUCCEEDED, expires_at=50.0, bytes_written=10)
    store.update(jobs[1], state=JobState.RUNNING, bytes_written=5)
    store.update(jobs[2], state=JobState.EXPIRED, expires_at=10.0, bytes_written=0)
    assert [j.id for j in store.page("key-a", JobState.RUNNING, None, 10)] == [jobs[1].id]
    assert [j.id for j in store.in_states(JobState.RUNNING, JobState.SUCCEEDED)] == [
        jobs[0].id,
        jobs[1].id,
    ]
    assert [j.id for j in store.expired(100.0)] == [done.id]
    assert store.stored_bytes() == 15
    assert store.counts() == {
        JobState.SUCCEEDED: 1,
        JobState.RUNNING: 1,
        JobState.EXPIRED: 1,
        JobState.QUEUED: 3,
    }
    store.delete(jobs[0].id)
    assert store.get(jobs[0].id) is None


# -- the artifact store ----------------------------------------------------------------

DATA = bytes(range(256)) * 40  # 10240 bytes


def write_all(artifacts: ArtifactStore, job_id: str, data: bytes, chunk: int) -> list[int]:
    writer = artifacts.writer(job_id)
    diverged = []
    try:
        for offset in range(0, len(data), chunk):
            at = writer.write(offset, data[offset : offset + chunk])
            if at is not None:
                diverged.append(at)
        at = writer.finish(len(data))
        if at is not None:
            diverged.append(at)
    finally:
        writer.close()
    return diverged


def test_bytes_read_back_from_any_offset(artifacts: ArtifactStore) -> None:
    job_id = secrets.token_hex(16)
    assert not artifacts.exists(job_id)
    assert write_all(artifacts, job_id, DATA, 1000) == []
    assert artifacts.exists(job_id)
    assert artifacts.read(job_id, 0, len(DATA)) == DATA
    assert artifacts.read(job_id, 999, 1002) == DATA[999:2001]  # across three writes
    assert artifacts.read(job_id, len(DATA) - 5, 100) == DATA[-5:]  # short at the end
    assert artifacts.read(job_id, len(DATA), 10) == b""
    artifacts.delete(job_id)
    assert not artifacts.exists(job_id)


def test_a_rerun_with_the_same_bytes_keeps_them_and_one_that_differs_replaces_them(
    artifacts: ArtifactStore,
) -> None:
    job_id = secrets.token_hex(16)
    write_all(artifacts, job_id, DATA[:6000], 1000)  # the first run, cut at 6000
    assert write_all(artifacts, job_id, DATA, 1000) == []  # the same bytes: nothing differs
    assert artifacts.read(job_id, 0, len(DATA)) == DATA

    changed = bytearray(DATA)
    changed[4321] ^= 0xFF
    # Written in other chunk sizes than before: the check is by byte, not by write.
    assert write_all(artifacts, job_id, bytes(changed), 700) == [4321]
    assert artifacts.read(job_id, 0, len(DATA) + 10) == bytes(changed)

    assert write_all(artifacts, job_id, bytes(changed[:3000]), 1000) == [3000]  # shorter
    assert artifacts.read(job_id, 0, len(DATA)) == bytes(changed[:3000])
    artifacts.delete(job_id)
