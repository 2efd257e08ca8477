"""Ray Serve placement on a real two-node Ray cluster: two replicas each of the tiny text
and image models behind the gRPC edge, called through the generated stubs."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from genserve.server.manifest import Manifest, Modality, load_manifest
from genserve.server.ray_serve.engine import RayEngine
from genserve.server.ray_serve.local_cluster import local_cluster
from genserve.server.ray_serve.placement import RaySettings
from genserve.server.ray_serve.wire import ReplicaStatus
from genserve.v1 import image_pb2, image_pb2_grpc, models_pb2, models_pb2_grpc
from tests.media_calls import TEST_CHUNK_SIZE, collect
from tests.server_thread import ServerThread, make_settings, wait_until
from tests.text_calls import generate, greedy

MANIFEST = Path(__file__).parent / "manifests" / "ray_two_replicas.toml"
TEXT, IMAGE = "smollm2-ray", "tiny-sd-ray"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Enough requests that two replicas both get some: Serve picks the less loaded of two.
MAX_SPREAD_REQUESTS = 16
LONG_STEPS = 100  # an image request that runs long enough to be interrupted
LIVE_POST_S = 1.0  # a replica posting within this is alive (they post every 0.25 s here)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with local_cluster(nodes=2, cpus_per_node=1) as address:
        yield address


def ray_settings(tmp_path: Path, address: str, **ray: Any) -> Any:
    from genserve.server.settings import MediaLimits

    return make_settings(
        tmp_path,
        media=MediaLimits(chunk_size=TEST_CHUNK_SIZE),
        ray=RaySettings(address=address, poll_s=0.25, **ray),
    )


@pytest.fixture(scope="module")
def edge(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = ray_settings(tmp_path_factory.mktemp("edge"), cluster)
    server = ServerThread(settings, load_manifest(MANIFEST)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(edge: ServerThread) -> Iterator[grpc.Channel]:
    channel = edge.channel()
    yield channel
    channel.close()


def ray_engine(server: ServerThread, modality: Modality) -> RayEngine:
    engine = server.server.registry.resolve(modality, None).engine
    assert isinstance(engine, RayEngine)
    return engine


def image_request(steps: int = 4, side: int = 64, **fields: Any) -> image_pb2.ImageGenerateRequest:
    return image_pb2.ImageGenerateRequest(
        prompt="a cozy living room", num_inference_steps=steps, width=side, height=side, **fields
    )


def draw(channel: grpc.Channel, request_id: str, **fields: Any) -> Any:
    stub = image_pb2_grpc.ImageServiceStub(channel)
    result = collect(
        stub.Generate(image_request(**fields), metadata=(("x-request-id", request_id),))
    )
    image = Image.open(io.BytesIO(result.data))
    assert image.format == "PNG" and image.size == (64, 64)
    assert result.final is not None and result.final.sha256 == result.sha256
    return result


def status_of(engine: RayEngine, replica: str) -> ReplicaStatus | None:
    return next((s for s in engine.replicas() if s.info.id == replica), None)


def test_two_replicas_each_are_running_and_serving(edge: ServerThread, channel: grpc.Channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("genserve.v1.TextService", "genserve.v1.ImageService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
    models = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
    by_name = {m.name: m for m in models.models}
    for name in (TEXT, IMAGE):
        assert by_name[name].placement == "ray"
        assert by_name[name].state == "loaded"
        assert by_name[name].replicas_running == 2
        assert by_name[name].memory_bytes == 0  # the weights are in the replicas
    for modality in (Modality.TEXT, Modality.IMAGE):
        replicas = wait_until(partial(lambda m: _two(ray_engine(edge, m).replicas()), modality), 30)
        assert len({r.info.node for r in replicas}) == 2  # one per node: Serve spreads them


def _two(replicas: list[ReplicaStatus]) -> list[ReplicaStatus] | None:
    return replicas if len(replicas) == 2 else None


def _two_live(engine: RayEngine) -> list[ReplicaStatus] | None:
    """Both replicas running and posting (a dead one's last post lingers a few seconds)."""
    now = time.time()
    live = [r for r in engine.replicas() if now - r.reported_at < LIVE_POST_S]
    return live if len(live) == 2 and engine.replicas_running == 2 else None


def test_requests_spread_over_both_replicas(edge: ServerThread, channel: grpc.Channel):
    """Two at a time until both replicas of each model have served; each usage row and
    each final event's timings name the replica."""
    for modality in (Modality.IMAGE, Modality.TEXT):
        seen: set[str] = set()
        with ThreadPoolExecutor(2) as pool:
            for start in range(0, MAX_SPREAD_REQUESTS, 2):
                ids = [f"spread-{modality}-{start + i}" for i in range(2)]
                if modality is Modality.IMAGE:
                    finals = [r.final for r in pool.map(lambda i: draw(channel, i), ids)]
                else:
                    results = list(
                        pool.map(lambda i: generate(channel, greedy(), request_id=i), ids)
                    )
                    assert all(r.text for r in results)
                    finals = [r.final for r in results]
                for request_id, final in zip(ids, finals, strict=True):
                    row = edge.wait_for_usage_row(request_id)
                    assert row["status_code"] == "OK" and row["replica"]
                    assert final is not None and final.timings.replica == row["replica"]
                    seen.add(row["replica"])
                if len(seen) == 2:
                    break
        assert seen == {r.info.id for r in ray_engine(edge, modality).replicas()}


def test_replica_killed_mid_stream_ends_unavailable_then_next_succeeds(
    edge: ServerThread, channel: grpc.Channel
):
    engine = ray_engine(edge, Modality.IMAGE)
    stub = image_pb2_grpc.ImageServiceStub(channel)
    call = stub.Generate(
        image_request(steps=LONG_STEPS), metadata=(("x-request-id", "killed-mid-stream"),)
    )
    kinds: list[str] = []
    with pytest.raises(grpc.RpcError) as failure:
        for event in call:
            kinds.append(str(event.WhichOneof("event")))
            if kinds.count("progress") == 1:
                replica = engine.replica_of("killed-mid-stream")
                assert replica is not None
                os.kill(replica.pid, signal.SIGKILL)  # the replica's process dies
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "final" not in kinds  # never a truncated OK
    row = edge.wait_for_usage_row("killed-mid-stream")
    assert row["status_code"] == "UNAVAILABLE" and row["replica"] == replica.id
    # The next requests go to the live replica while Serve replaces the dead one.
    for i in range(3):
        draw(channel, f"after-kill-{i}")
        assert edge.wait_for_usage_row(f"after-kill-{i}")["replica"] != replica.id


def test_client_cancel_stops_the_replicas_compute(edge: ServerThread, channel: grpc.Channel):
    engine = ray_engine(edge, Modality.IMAGE)
    stub = image_pb2_grpc.ImageServiceStub(channel)
    call = stub.Generate(
        image_request(steps=LONG_STEPS), metadata=(("x-request-id", "cancelled-by-client"),)
    )
    replica = None
    for event in call:
        if event.WhichOneof("event") == "progress":
            replica = engine.replica_of("cancelled-by-client")
            break
    assert replica is not None
    before = wait_until(lambda: status_of(engine, replica.id), 30)
    wait_until(lambda: in_flight_gauge(edge, IMAGE) == 1 or None, 30)  # the edge's /metrics
    call.cancel()
    # The replica's engine gives the request up: its in-flight gauge drops to 0 and it
    # counts one more cancelled request; it stopped well short of the 100 steps.
    after = wait_until(
        lambda: _stopped(status_of(engine, replica.id), before.cancelled),
        30,
    )
    assert after.events - before.events < LONG_STEPS
    # and no further steps are logged once it stopped (the replica posts every second)
    time.sleep(2.5)
    later = status_of(engine, replica.id)
    assert later is not None and later.events == after.events
    wait_until(lambda: in_flight_gauge(edge, IMAGE) == 0 or None, 30)
    row = edge.wait_for_usage_row("cancelled-by-client")
    assert row["status_code"] == "CANCELLED" and row["replica"] == replica.id
    # and it serves the next request
    draw(channel, "after-cancel")


def in_flight_gauge(server: ServerThread, model: str) -> float:
    """genserve_model_in_flight for the model, as Prometheus scrapes it off the edge."""
    metrics = httpx.get(f"http://127.0.0.1:{server.server.metrics_port}/metrics").text
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "genserve_model_in_flight" and sample.labels["model"] == model:
                return float(sample.value)
    raise AssertionError(f"no in-flight gauge for {model}")


def _stopped(status: ReplicaStatus | None, cancelled_before: int) -> ReplicaStatus | None:
    if status is None or status.in_flight or status.cancelled <= cancelled_before:
        return None
    return status


def test_second_edge_fronts_the_same_replicas(cluster: str, edge: ServerThread, tmp_path: Path):
    """The edge is stateless: another one with the same manifest deploys nothing new and
    serves from the same replicas."""
    engine = ray_engine(edge, Modality.IMAGE)
    # (after the kill above, Serve may still be bringing a replacement up)
    replicas = {r.info.id for r in wait_until(lambda: _two_live(engine), 60)}
    manifest = load_manifest(MANIFEST).model_copy(update={"text": ()})
    second = ServerThread(ray_settings(tmp_path, cluster), manifest).start()
    try:
        channel = second.channel()
        draw(channel, "second-edge")
        assert second.wait_for_usage_row("second-edge")["replica"] in replicas
        channel.close()
    finally:
        second.stop()


def test_health_follows_the_deployment(edge: ServerThread, channel: grpc.Channel):
    """The application goes away: the model and its service turn NOT_SERVING, requests get
    UNAVAILABLE; reloading the model deploys it again and it serves."""
    from ray import serve

    health = health_pb2_grpc.HealthStub(channel)
    models = models_pb2_grpc.ModelServiceStub(channel)

    def status(service: str) -> Any:
        return health.Check(health_pb2.HealthCheckRequest(service=service)).status

    serve.delete(ray_engine(edge, Modality.IMAGE).app)
    for service in ("genserve.v1.ImageService", f"genserve.v1.ImageService/{IMAGE}"):
        wait_until(partial(lambda s: status(s) == NOT_SERVING or None, service), 30)
    assert status("genserve.v1.TextService") == SERVING  # the other deployment is untouched
    with pytest.raises(grpc.RpcError) as refused:
        draw(channel, "deployment-gone")
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    models.UnloadModel(models_pb2.UnloadModelRequest(name=IMAGE))
    info = models.LoadModel(models_pb2.LoadModelRequest(name=IMAGE), timeout=120)
    assert info.state == "loaded" and info.replicas_running == 2
    wait_until(lambda: status("genserve.v1.ImageService") == SERVING or None, 30)
    draw(channel, "deployed-again")


def test_health_follows_a_deployment_that_cannot_start(cluster: str, tmp_path: Path):
    broken = Manifest.model_validate(
        {
            "image": [
                {
                    "name": "never-starts",
                    "source": "store:no-such-pipeline",
                    "placement": "ray",
                    "ray": {"num_replicas": 1, "num_cpus": 0, "max_constructor_retries": 1},
                }
            ]
        }
    )
    server = ServerThread(ray_settings(tmp_path, cluster), broken).start()
    try:
        channel = server.channel()
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("genserve.v1.ImageService", "genserve.v1.ImageService/never-starts"):
            check = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == NOT_SERVING
        models = models_pb2_grpc.ModelServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest()
        )
        (info,) = models.models
        assert info.state == "failed" and "genserve-never-starts" in info.detail
        assert "Traceback" not in info.detail
        with pytest.raises(grpc.RpcError) as refused:
            draw(channel, "never-starts")
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        channel.close()
    finally:
        server.stop()
