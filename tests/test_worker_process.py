"""Placement `process`: each model's engine in a worker process of its own.

The server under test is real, its workers are real processes, and the crashes are real
signals sent to them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.worker.process_engine import ProcessEngine
from genserve.v1 import image_pb2, image_pb2_grpc, models_pb2, models_pb2_grpc
from tests.media_calls import TEST_CHUNK_SIZE, collect
from tests.server_thread import MODEL_STORE, ServerThread, make_settings, wait_until
from tests.text_calls import greedy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RESTART_TIMEOUT_S = 120  # a fresh interpreter importing torch, on a busy 2-core machine


def tiny(modality: Modality, **changes: Any) -> Any:
    """The tiny profile's model of the modality, in a worker process."""
    spec = load_manifest(manifest_path("tiny")).spec_for(modality)
    assert spec is not None
    return spec.model_copy(update={"placement": "process", **changes})


def two_model_manifest() -> Manifest:
    """The tiny profile's text and image models, both in worker processes."""
    return Manifest(text=(tiny(Modality.TEXT),), image=(tiny(Modality.IMAGE),))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    from genserve.server.settings import MediaLimits

    settings = make_settings(
        tmp_path_factory.mktemp("var"), media=MediaLimits(chunk_size=TEST_CHUNK_SIZE)
    )
    thread = ServerThread(settings, two_model_manifest()).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    channel = server.channel()
    yield channel
    channel.close()


def engine_of(server: ServerThread, modality: Modality) -> ProcessEngine:
    engine = server.server.registry.resolve(modality, None).engine
    assert isinstance(engine, ProcessEngine)
    return engine


def worker_pids() -> set[int]:
    """Every live genserve worker process on this machine, from the process table."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"genserve.server.worker" in cmdline and state != "Z":
            pids.add(int(entry.name))
    return pids


def image_request(steps: int = 10, seed: int = 7) -> image_pb2.ImageGenerateRequest:
    return image_pb2.ImageGenerateRequest(
        prompt="a red cube", width=64, height=64, num_inference_steps=steps, seed=seed
    )


def model_info(channel: grpc.Channel, name: str) -> models_pb2.ModelInfo:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    models = stub.ListModels(models_pb2.ListModelsRequest(), timeout=10).models
    return next(m for m in models if m.name == name)


def health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_restarted(engine: ProcessEngine, old_pid: int) -> int:
    return wait_until(
        lambda: engine.pid if engine.ready and engine.pid not in (None, old_pid) else None,
        RESTART_TIMEOUT_S,
    )


def test_each_model_runs_in_its_own_worker(server: ServerThread, channel: grpc.Channel) -> None:
    text, image = engine_of(server, Modality.TEXT), engine_of(server, Modality.IMAGE)
    assert text.pid is not None and image.pid is not None
    assert len({os.getpid(), text.pid, image.pid}) == 3
    assert {text.pid, image.pid} <= worker_pids()
    info = model_info(channel, text.name)
    assert info.placement == "process" and info.memory_bytes > 0
    assert text.rss_bytes > 0


def test_a_worker_killed_mid_stream_ends_it_unavailable_and_comes_back(
    server: ServerThread, channel: grpc.Channel
) -> None:
    """The text model's worker is SIGKILLed while it streams: that stream ends
    UNAVAILABLE, an image request running at the same time completes, the model is
    NOT_SERVING until its worker is back, then serves again. One usage row per request."""
    from genserve.v1 import text_pb2_grpc

    text = engine_of(server, Modality.TEXT)
    old_pid = text.pid
    assert old_pid is not None
    image_result: dict[str, Any] = {}

    def image_meanwhile() -> None:
        stub = image_pb2_grpc.ImageServiceStub(channel)
        call = stub.Generate(image_request(steps=30), timeout=120)
        image_result["media"] = collect(call)
        image_result["id"] = dict(call.initial_metadata())["x-request-id"]

    image_thread = threading.Thread(target=image_meanwhile)
    image_thread.start()
    call = text_pb2_grpc.TextServiceStub(channel).Generate(
        greedy("Write a long essay about FastAPI.", max_new_tokens=400), timeout=120
    )
    received = 0
    with pytest.raises(grpc.RpcError) as failure:
        for _ in call:
            received += 1
            if received == 3:
                os.kill(old_pid, signal.SIGKILL)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "worker process died (killed by SIGKILL)" in str(failure.value.details())
    text_request_id = dict(call.initial_metadata())["x-request-id"]
    assert not text.ready
    service = f"genserve.v1.TextService/{text.name}"
    wait_until(lambda: True if health(channel, service) == NOT_SERVING else None, 5)
    assert "restarting" in model_info(channel, text.name).detail

    image_thread.join(120)
    media = image_result["media"]
    assert media.final is not None and media.final.total_bytes == len(media.data)

    new_pid = wait_restarted(text, old_pid)
    assert new_pid in worker_pids() and old_pid not in worker_pids()
    wait_until(lambda: True if health(channel, service) == SERVING else None, 10)
    assert text.restarts == 1
    after = text_pb2_grpc.TextServiceStub(channel).Generate(greedy(max_new_tokens=4), timeout=60)
    assert [r for r in after][-1].HasField("final")

    rows = server.usage_rows(text_request_id)
    assert len(rows) == 1
    assert rows[0]["status_code"] == "UNAVAILABLE"
    assert "worker process died" in rows[0]["status_detail"]
    assert len(server.usage_rows(image_result["id"])) == 1


def test_a_media_worker_killed_mid_stream(server: ServerThread, channel: grpc.Channel) -> None:
    image = engine_of(server, Modality.IMAGE)
    old_pid = image.pid
    assert old_pid is not None
    call = image_pb2_grpc.ImageServiceStub(channel).Generate(image_request(steps=60), timeout=120)
    events = 0
    with pytest.raises(grpc.RpcError) as failure:
        for _ in call:
            events += 1
            if events == 2:  # the header and one denoising step
                os.kill(old_pid, signal.SIGKILL)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    request_id = dict(call.initial_metadata())["x-request-id"]
    # The text model never noticed.
    from genserve.v1 import text_pb2_grpc

    text_call = text_pb2_grpc.TextServiceStub(channel).Generate(greedy(), timeout=60)
    assert [r for r in text_call][-1].HasField("final")
    wait_restarted(image, old_pid)
    again = collect(image_pb2_grpc.ImageServiceStub(channel).Generate(image_request(), timeout=120))
    assert again.final is not None and again.final.sha256 == again.sha256
    assert len(server.usage_rows(request_id)) == 1


def test_cancel_stops_the_workers_compute_within_a_step(
    server: ServerThread, channel: grpc.Channel
) -> None:
    """The caller cancels after two denoising steps: the worker's own step count stops
    within a step of that (read from the worker, not inferred from the client)."""
    image = engine_of(server, Modality.IMAGE)
    before = image.stats().steps
    call = image_pb2_grpc.ImageServiceStub(channel).Generate(image_request(steps=80), timeout=120)
    progress = 0
    for event in call:
        if event.HasField("progress"):
            progress += 1
            if progress == 2:
                call.cancel()
                break
    wait_until(lambda: True if image.stats().in_flight == 0 else None, 30)
    time.sleep(1.0)  # any step still running would show in the next stats
    ran = image.stats().steps - before
    # The engine may have run ahead of the reader by its buffers; it must not finish.
    assert 2 <= ran < 80, f"the worker ran {ran} steps of 80 after a cancel at step 2"
    time.sleep(1.0)
    assert image.stats().steps - before == ran, "the worker kept stepping after the cancel"


def test_a_deadline_stops_the_workers_compute(server: ServerThread, channel: grpc.Channel) -> None:
    image = engine_of(server, Modality.IMAGE)
    wait_until(lambda: True if image.stats().in_flight == 0 else None, 30)
    before = image.stats().steps
    call = image_pb2_grpc.ImageServiceStub(channel).Generate(image_request(steps=100), timeout=1.5)
    with pytest.raises(grpc.RpcError) as failure:
        for _ in call:
            pass
    # Refused up front once admission has learned the model's speed, else cut mid-run.
    assert failure.value.code() in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    wait_until(lambda: True if image.stats().in_flight == 0 else None, 30)
    time.sleep(1.0)
    ran = image.stats().steps - before
    assert ran < 100, "the request ran every step after its deadline"
    settled = image.stats().steps
    time.sleep(1.0)
    assert image.stats().steps == settled


def test_unload_ends_the_worker_process(server: ServerThread, channel: grpc.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    image = engine_of(server, Modality.IMAGE)
    pid = image.pid
    assert pid is not None
    stub.UnloadModel(models_pb2.UnloadModelRequest(name=image.name), timeout=60)
    wait_until(lambda: True if pid not in worker_pids() else None, 30)
    stub.LoadModel(models_pb2.LoadModelRequest(name=image.name), timeout=RESTART_TIMEOUT_S)
    reloaded = engine_of(server, Modality.IMAGE)
    assert reloaded.pid not in (None, pid)


def test_a_worker_that_fails_to_load_leaves_the_others_serving(tmp_path: Path) -> None:
    """One image model's weights are missing (its worker raises) and another's worker is
    killed while it loads (a crash): both are FAILED with the reason in ListModels, and
    the text model serves."""
    from genserve.v1 import text_pb2_grpc

    missing = tiny(Modality.IMAGE, name="no-weights", source=str(tmp_path / "nothing"))
    crashing = tiny(Modality.IMAGE, name="crashes-loading", default=True)
    manifest = Manifest(text=(tiny(Modality.TEXT),), image=(missing, crashing))
    killed: list[int] = []

    def kill_the_worker_while_it_loads() -> None:
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while time.monotonic() < deadline and not killed:
            for pid in worker_pids():
                if _worker_model(pid) == "crashes-loading":
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_worker_while_it_loads)
    killer.start()
    server = ServerThread(make_settings(tmp_path / "var"), manifest).start()
    try:
        killer.join()
        assert killed, "the worker of crashes-loading was never seen"
        channel = server.channel()
        for name, reason in (
            ("no-weights", "nothing"),
            ("crashes-loading", "died while loading (killed by SIGKILL)"),
        ):
            info = model_info(channel, name)
            assert info.state == "failed" and reason in info.detail, info.detail
            assert health(channel, f"genserve.v1.ImageService/{name}") == NOT_SERVING
        text_call = text_pb2_grpc.TextServiceStub(channel).Generate(greedy(), timeout=60)
        assert [r for r in text_call][-1].HasField("final")
        channel.close()
    finally:
        server.stop()


def _worker_model(pid: int) -> str | None:
    """The model a worker runs, from its command line (`--model NAME`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    return argv[argv.index("--model") + 1] if "--model" in argv else None


def server_process(tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    """`python -m genserve.server` on the two-model manifest, as `make run` starts it."""
    manifest = tmp_path / "two.toml"
    manifest.write_text(_toml(two_model_manifest()))
    command = [sys.executable, "-m", "genserve.server", "--manifest", str(manifest)]
    command += ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var")]
    command += ["--model-store", str(MODEL_STORE), *flags]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_and_leaves_no_worker_behind(tmp_path: Path) -> None:
    """After SIGTERM, the server and every worker it started are gone from the process
    table inside the grace period."""
    grace_s = 3
    server = server_process(tmp_path, "--shutdown-grace-s", str(grace_s))
    try:
        _wait_for_log(server, "SERVING", RESTART_TIMEOUT_S)
        ours = _children(server.pid)
        assert len(ours) == 2
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        elapsed = time.monotonic() - started
        assert elapsed < grace_s + 5, f"the server took {elapsed:.1f} s to stop"
        wait_until(lambda: True if not (ours & worker_pids()) else None, 5)
    finally:
        if server.poll() is None:
            server.kill()


def test_a_killed_server_takes_its_workers_with_it(tmp_path: Path) -> None:
    server = server_process(tmp_path)
    try:
        _wait_for_log(server, "SERVING", RESTART_TIMEOUT_S)
        ours = _children(server.pid)
        assert len(ours) == 2
        server.kill()
        server.wait(10)
        wait_until(lambda: True if not (ours & worker_pids()) else None, 10)
    finally:
        if server.poll() is None:
            server.kill()


def _children(pid: int) -> set[int]:
    return {p for p in worker_pids() if _parent_of(p) == pid}


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _wait_for_log(process: subprocess.Popen[str], needle: str, timeout: float) -> None:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError("the server exited before it was ready")
        if needle in line:
            return
    raise TimeoutError(needle)


def _toml(manifest: Manifest) -> str:
    import tomli_w

    tables = {
        str(modality): [spec.model_dump(mode="json", exclude_none=True) for spec in specs]
        for modality in Modality
        if (specs := manifest.specs(modality))
    }
    return tomli_w.dumps(tables)
