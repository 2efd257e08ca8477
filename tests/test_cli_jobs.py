"""`genserve jobs ...` and `--detach`: against the stand-in JobService (tests/fake_jobs.py)
in process, then as a subprocess against a real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from genserve.client import cli, defaults
from genserve.contract import SPECS
from genserve.contract.modalities.mesh import MESH
from tests.fake_jobs import CHUNK, DATA, JOB_ID, Cut, FakeJobs
from tests.jobs_setup import start_jobs_server
from tests.server_thread import ServerThread

CLI_TIMEOUT_S = 180
MEDIA = [s for s in SPECS if s.name in ("image", "audio", "video", "mesh")]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJobs]:
    monkeypatch.setattr(defaults, "RETRY_BACKOFF_S", 0.01)
    server = FakeJobs().start()
    yield server
    server.stop()


def run(fake: FakeJobs, *args: str) -> int:
    return cli.main(["--target", fake.target, *args])


@pytest.mark.parametrize("name", [n for s in MEDIA for n in s.names])
def test_every_media_command_and_alias_detaches(
    fake: FakeJobs, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upload = tmp_path / "in.png"
    upload.write_bytes(b"an image")
    first = str(upload) if name in ("video", "image-to-video") else "a prompt"
    assert run(fake, "--model", "m1", name, first, "--detach") == 0
    assert capsys.readouterr().out.strip() == "job-1"
    (sent,) = fake.submitted
    modality = sent.WhichOneof("request")
    assert name in next(s for s in MEDIA if s.name == modality).names
    assert getattr(sent, modality).model == "m1"


def test_detach_json_gives_the_job(fake: FakeJobs, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "--json", MESH.name, "a chair", "--detach") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["id"] == "job-1" and job["state"] == "queued"


def test_list_get_cancel_delete(fake: FakeJobs, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "jobs", "list", "--limit", "3") == 0
    out = capsys.readouterr().out
    assert all(f"job-{n}" in out for n in range(3)) and "job-3" not in out
    assert run(fake, "--json", "jobs", "list", "--state", "running") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in listed] == [f"job-{n}" for n in range(5)]
    assert fake.listed[-1].state == 2  # JOB_STATE_RUNNING
    assert run(fake, "--json", "jobs", "get", JOB_ID) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "succeeded" and job["final"]["total_bytes"] == len(DATA)
    assert run(fake, "jobs", "get", JOB_ID) == 0
    assert "sha256" in capsys.readouterr().out
    assert run(fake, "jobs", "cancel", JOB_ID) == 0
    assert capsys.readouterr().out.strip() == f"{JOB_ID} cancelled"
    assert run(fake, "jobs", "delete", JOB_ID) == 0
    assert run(fake, "jobs", "get", "nope") == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_download_resumes_a_partial_file_across_a_cut(fake: FakeJobs, tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(DATA[:7])
    fake.cuts = [Cut(grpc.StatusCode.UNAVAILABLE, after=1)]
    assert run(fake, "jobs", "download", JOB_ID, "-o", str(target)) == 0
    assert target.read_bytes() == DATA and fake.download_offsets == [7, 7 + CHUNK]
    assert run(fake, "jobs", "download", JOB_ID, "-o", str(target), "--no-resume") == 0
    assert target.read_bytes() == DATA and fake.download_offsets[-1] == 0


def test_watch_writes_and_resumes_the_file(fake: FakeJobs, tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    fake.cuts = [Cut(grpc.StatusCode.UNAVAILABLE, after=2)]
    assert run(fake, "jobs", "watch", JOB_ID, "-o", str(target)) == 0
    assert target.read_bytes() == DATA and fake.watch_offsets == [0, 2 * CHUNK]
    target.write_bytes(DATA[:9])
    assert run(fake, "jobs", "watch", JOB_ID, "-o", str(target)) == 0
    assert target.read_bytes() == DATA and fake.watch_offsets[-1] == 9
    target.write_bytes(b"y" * 9)  # not the job's first bytes: caught at the end
    assert run(fake, "jobs", "watch", JOB_ID, "-o", str(target)) == 1


def test_watch_starts_the_file_again_when_the_job_reran(fake: FakeJobs, tmp_path: Path) -> None:
    fake.cuts = [Cut(grpc.StatusCode.UNAVAILABLE, after=2)]
    fake.rerun_after_first_cut = True
    target = tmp_path / "out.png"
    assert run(fake, "jobs", "watch", JOB_ID, "-o", str(target)) == 0
    assert target.read_bytes() == fake.data != DATA


# -- a real server, as a subprocess -----------------------------------------------------


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    server = start_jobs_server(tmp_path_factory.mktemp("cli-jobs-server"))
    yield server
    server.stop()


def genserve(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    target = ["--target", f"localhost:{server.port}"]
    return subprocess.run(
        [sys.executable, "-m", "genserve.client.cli", *target, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_detach_then_download_a_png(jobs_server: ServerThread, tmp_path: Path) -> None:
    submitted = genserve(jobs_server, "image", "a room", "--num-inference-steps", "2", "--detach")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id and "genserve jobs watch" in submitted.stderr
    out = tmp_path / "room.png"
    downloaded = genserve(jobs_server, "jobs", "download", job_id, "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert Image.open(io.BytesIO(out.read_bytes())).size == (64, 64)
    assert "saved" in downloaded.stderr
    listed = genserve(jobs_server, "jobs", "list")
    assert listed.returncode == 0 and job_id in listed.stdout and "succeeded" in listed.stdout
    got = json.loads(genserve(jobs_server, "--json", "jobs", "get", job_id).stdout)
    assert got["final"]["total_bytes"] == out.stat().st_size
    half = tmp_path / "half.png"
    half.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    resumed = genserve(jobs_server, "jobs", "download", job_id, "-o", str(half))
    assert resumed.returncode == 0 and half.read_bytes() == out.read_bytes()
    watched = genserve(jobs_server, "jobs", "watch", job_id)
    assert watched.returncode == 0 and "succeeded" in watched.stderr
    deleted = genserve(jobs_server, "jobs", "delete", job_id)
    assert deleted.returncode == 0
    assert genserve(jobs_server, "jobs", "get", job_id).returncode == 1
