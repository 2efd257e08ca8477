"""Server lifecycle: health transitions, failed models, load policies, draining, reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from genserve.server.engine.contract import EngineStats
from genserve.server.manifest import LoadPolicy, Manifest, Modality, load_manifest, manifest_path
from genserve.server.text.types import TextEvent, TextRequest
from genserve.v1 import models_pb2, models_pb2_grpc, text_pb2
from tests.server_thread import ServerThread, make_settings
from tests.text_calls import generate, greedy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TEXT_SERVICE = "genserve.v1.TextService"


def text_only_manifest(**text_changes: Any) -> Manifest:
    """The tiny profile's text model alone: these servers test the lifecycle, not media."""
    text = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert text is not None
    return Manifest(text=(text.model_copy(update=text_changes),))


def check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture
def broken_model_server(tmp_path: Path) -> Iterator[ServerThread]:
    """A manifest whose text weights do not exist: the load fails."""
    manifest = text_only_manifest(source=str(tmp_path / "no-such-model"), gguf_file=None)
    server = ServerThread(make_settings(tmp_path), manifest)
    yield server
    server.stop()


def test_health_goes_from_not_serving_to_serving_and_reports_a_failed_model(
    broken_model_server: ServerThread,
) -> None:
    broken_model_server.start(load=False)
    channel = broken_model_server.channel()
    assert check(channel) == NOT_SERVING
    assert check(channel, TEXT_SERVICE) == NOT_SERVING

    broken_model_server.load()
    assert check(channel) == SERVING  # the server serves what it could load
    assert check(channel, TEXT_SERVICE) == NOT_SERVING
    assert check(channel, "genserve.v1.MeshService") == NOT_SERVING  # not in this manifest

    listing = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
    text = next(m for m in listing.models if m.modality == "text")
    assert text.state == "failed" and text.detail and text.is_default
    assert not [m for m in listing.models if m.modality == "mesh"]  # none configured

    # Failed to load is permanent until an operator acts: FAILED_PRECONDITION, which
    # clients do not retry (UNAVAILABLE, which they do, stays for passing causes).
    with pytest.raises(grpc.RpcError) as error:
        generate(channel, greedy(max_new_tokens=2))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed to load" in (error.value.details() or "")
    assert check(channel, f"{TEXT_SERVICE}/{text.name}") == NOT_SERVING

    from genserve.v1 import mesh_pb2, mesh_pb2_grpc

    with pytest.raises(grpc.RpcError) as error:
        list(
            mesh_pb2_grpc.MeshServiceStub(channel).Generate(
                mesh_pb2.MeshGenerateRequest(prompt="x")
            )
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no mesh model is configured" in (error.value.details() or "")


class ExplodingEngine:
    """Fault injection: an engine whose generate() fails with an unexpected error."""

    name = "exploding"
    memory_bytes = 0
    context_length = 8192
    ready = True

    def stats(self) -> EngineStats:
        return EngineStats(queued=0, in_flight=0, cancelled=0)

    def wait_idle(self, timeout: float) -> bool:
        return True

    async def generate(self, request: TextRequest) -> AsyncIterator[TextEvent]:
        raise RuntimeError("secret internal detail /etc/passwd")
        yield  # pragma: no cover - makes this an async generator

    def close(self, wait_s: float = 0) -> bool:
        return True


def test_unexpected_errors_are_internal_with_a_safe_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ServerThread(
        make_settings(tmp_path),
        text_only_manifest(),
        loader_for=lambda modality, spec: lambda spec: ExplodingEngine(),
    ).start()
    try:
        channel = server.channel()
        with pytest.raises(grpc.RpcError) as error:
            generate(channel, greedy(max_new_tokens=2), request_id="explodes")
        assert error.value.code() == grpc.StatusCode.INTERNAL
        details = error.value.details() or ""
        assert "request_id=explodes" in details
        assert "secret" not in details and "Traceback" not in details
        logged = [
            r for r in caplog.records if r.exc_info and getattr(r, "request_id", None) == "explodes"
        ]
        assert logged, "the traceback should be in the server log"
        row = server.wait_for_usage_row("explodes")
        assert row["status_code"] == "INTERNAL"
        # still serving
        assert check(channel) == SERVING
    finally:
        server.stop()


@pytest.fixture(scope="module")
def on_demand_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    manifest = text_only_manifest(load_policy=LoadPolicy.ON_DEMAND)
    server = ServerThread(make_settings(tmp_path_factory.mktemp("on-demand")), manifest).start()
    yield server
    if server._thread.is_alive():  # the drain test stops it itself
        server.stop()


def test_on_demand_model_loads_per_request_and_is_dropped_after(
    on_demand_server: ServerThread,
) -> None:
    channel = on_demand_server.channel()
    entry = on_demand_server.server.registry.resolve(Modality.TEXT, None)
    assert check(channel, TEXT_SERVICE) == SERVING
    assert entry.engine is None  # nothing held between requests
    result = generate(channel, greedy(max_new_tokens=3))
    assert result.final is not None and result.final.usage.completion_tokens == 3
    assert entry.engine is None


def test_shutdown_reports_not_serving_then_drains_in_flight_streams(
    on_demand_server: ServerThread,
) -> None:
    channel = on_demand_server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=TEXT_SERVICE))
    statuses = iter(watch)
    assert next(statuses).status == SERVING

    from genserve.v1 import text_pb2_grpc

    stream = text_pb2_grpc.TextServiceStub(channel).Generate(greedy(max_new_tokens=24))
    responses = iter(stream)
    first = next(responses)  # the model is loaded and generating
    assert first.HasField("delta")

    stopping = asyncio.run_coroutine_threadsafe(
        on_demand_server.server.stop(grace=120), on_demand_server._loop
    )
    assert next(statuses).status == NOT_SERVING  # first, before anything else
    watch.cancel()  # an open watch is itself an in-flight call the server would wait for

    rest = list(responses)  # the in-flight stream runs to its end
    final = rest[-1].final
    assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 24
    stopping.result(timeout=60)
    on_demand_server._loop.call_soon_threadsafe(on_demand_server._loop.stop)
    on_demand_server._thread.join()

    with pytest.raises(grpc.RpcError) as error:
        generate(channel, greedy(max_new_tokens=2), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_every_service_as_grpcurl_sees_it(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        "genserve.v1.TextService",
        "genserve.v1.AudioService",
        "genserve.v1.ImageService",
        "genserve.v1.VideoService",
        "genserve.v1.MeshService",
        "genserve.v1.EmbeddingService",
        "genserve.v1.ModelService",
        "grpc.health.v1.Health",
    } <= services
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(database)
    method = pool.FindServiceByName("genserve.v1.TextService").FindMethodByName("Generate")
    assert method.server_streaming and not method.client_streaming
    assert method.input_type.full_name == "genserve.v1.TextGenerateRequest"
