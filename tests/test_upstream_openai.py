"""Models served elsewhere, behind our RPCs: an edge genserve whose models are `upstream`
engines in front of a real OpenAI-compatible server (a second genserve's bridge, each in
its own process). No mocks: faults are made by killing, throttling and misconfiguring."""

from __future__ import annotations

import io
import time
import uuid
import wave
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from bench.server_process import free_port
from genserve.server.auth.keys import create_key
from genserve.server.manifest import Manifest
from genserve.server.settings import MediaLimits
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
)
from tests.auth_setup import auth_server, bearer
from tests.media_calls import TEST_CHUNK_SIZE, MediaResult, collect
from tests.server_thread import ServerThread
from tests.text_calls import collect_text
from tests.upstream_setup import (
    BUDGET_DRAIN_TOKENS,
    RETRY_S,
    RETRY_TOKENS,
    Upstream,
    bridge_on,
    genserve_upstream,
)

pytestmark = pytest.mark.timeout(600)

SMOLLM = "smollm2-135m-instruct"
WRONG_KEY = "gsk.nosuchkey.d0e5f3c1b2a4968778695a4b3c2d1e0f"
FAST_HEALTH = {"health_interval_s": 0.3}


def upstream(url: str, key_file: Path, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "openai", "base_url": url, "api_key_file": key_file}
    return spec | FAST_HEALTH | fields


def model(name: str, upstream_spec: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": name, "engine": "upstream", "upstream": upstream_spec, **fields}


class Edge:
    """The edge server, its caller key, and the ports of the upstreams that come later."""

    def __init__(self, server: ServerThread, caller_key: str, ports: dict[str, int]) -> None:
        self.server = server
        self.metadata = bearer(caller_key)
        self.ports = ports
        self.channel = server.channel()

    def call_id(self) -> tuple[tuple[str, str], ...]:
        return (*self.metadata, ("x-request-id", uuid.uuid4().hex))

    def health(self, service: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


@pytest.fixture(scope="module")
def genserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with genserve_upstream(tmp_path_factory.mktemp("upstream")) as served:
        yield served


@pytest.fixture(scope="module")
def edge(genserve: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("edge")
    keys = genserve.keys
    good, throttled, wrong = folder / "good", folder / "throttled", folder / "wrong"
    good.write_text(keys.edge + "\n")
    throttled.write_text(keys.throttled)
    wrong.write_text(WRONG_KEY)
    ports = {"down": free_port(), "killable": free_port()}
    v1 = genserve.v1
    manifest = Manifest.model_validate(
        {
            "text": [
                model("up-chat", upstream(v1, good, model=SMOLLM), default=True),
                model("up-chat-wrong-key", upstream(v1, wrong, model=SMOLLM)),
                model("up-chat-unknown", upstream(v1, good, model="no-such-model")),
                model(
                    "up-chat-down",
                    upstream(
                        f"http://127.0.0.1:{ports['down']}/v1",
                        good,
                        model=SMOLLM,
                        timeouts={"connect_s": 1.0},
                    ),
                ),
                model(
                    "up-chat-killable",
                    upstream(
                        f"http://127.0.0.1:{ports['killable']}/v1",
                        good,
                        model=SMOLLM,
                    ),
                ),
                model(
                    "up-chat-throttled",
                    upstream(v1, throttled, model=SMOLLM, retries={"max_wait_s": RETRY_S + 5}),
                ),
                model(
                    "up-chat-impatient",
                    upstream(v1, throttled, model=SMOLLM, retries={"max_wait_s": 0.5}),
                ),
            ],
            "embedding": [model("up-embed", upstream(v1, good, model="all-MiniLM-L6-v2"))],
            "image": [
                model("up-image", upstream(v1, good, model="tiny-stable-diffusion"), default=True),
                model(
                    "up-image-slow",
                    upstream(
                        v1, good, model="tiny-stable-diffusion", timeouts={"first_byte_s": 0.2}
                    ),
                ),
            ],
            "audio": [model("up-speech", upstream(v1, good, model="tiny-bark"))],
        }
    )
    edge_keys = folder / "edge-keys.json"
    caller_key = create_key(edge_keys, "caller")
    server = auth_server(folder, edge_keys, manifest, media=MediaLimits(chunk_size=TEST_CHUNK_SIZE))
    yield Edge(server, caller_key, ports)
    server.stop()


def _chat(edge: Edge, name: str, **fields: Any) -> text_pb2.TextGenerateRequest:
    fields.setdefault("do_sample", False)
    fields.setdefault("max_new_tokens", 16)
    fields.setdefault("prompt", "What is FastAPI?")
    return text_pb2.TextGenerateRequest(model=name, **fields)


def _text(call: Any) -> tuple[list[str], text_pb2.TextFinal]:
    result = collect_text(call)
    assert result.final is not None
    return result.deltas, result.final


def _all_edge_rows(edge: Edge) -> list[dict[str, Any]]:
    import sqlite3

    edge.server.server.usage_log.flush()
    with sqlite3.connect(edge.server.server.settings.usage_db_path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM usage")]


def _wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_chat_streams_the_upstreams_tokens_with_its_usage(edge: Edge, genserve: Upstream) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    metadata = edge.call_id()
    deltas, final = _text(stub.Generate(_chat(edge, "up-chat"), metadata=metadata, timeout=60))
    request_id = dict(metadata)["x-request-id"]

    # The same greedy request straight to the upstream's own gRPC port gives the same text.
    with grpc.insecure_channel(genserve.target) as direct:
        direct_stub = text_pb2_grpc.TextServiceStub(direct)
        direct_request = _chat(edge, "smollm2-135m-instruct")
        expected, _ = _text(
            direct_stub.Generate(direct_request, metadata=bearer(genserve.keys.edge), timeout=60)
        )
    assert len(deltas) > 1  # streamed, not one lump
    # The same model's greedy answer. Only its start is compared: llama.cpp's KV cells land
    # where earlier requests freed theirs, and that moves near-ties late in an answer.
    assert deltas[:3] == expected[:3]
    assert final.usage.completion_tokens == 16 and final.usage.prompt_tokens > 0
    assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH

    (row,) = edge.server.usage_rows(request_id)
    assert row["status_code"] == "OK" and row["model"] == "up-chat"
    assert row["upstream_ms"] is not None and row["upstream_ms"] > 0
    assert row["completion_tokens"] == 16
    # Our request ID went upstream; our caller's key did not: the upstream saw the edge's.
    upstream_rows = _wait_for(lambda: genserve.usage_rows(request_id))
    assert [r["key_id"] for r in upstream_rows] == ["edge"]


def test_embeddings_come_back_in_order(edge: Edge, genserve: Upstream) -> None:
    texts = ["FastAPI is a web framework", "Bark speaks", "FastAPI is a Python framework"]
    stub = embedding_pb2_grpc.EmbeddingServiceStub(edge.channel)
    reply = stub.Embed(
        embedding_pb2.EmbedRequest(texts=texts, model="up-embed"), metadata=edge.metadata
    )
    vectors = np.array([list(v.values) for v in reply.embeddings])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[2], vectors[0] @ vectors[1]
    assert similar > unrelated
    assert reply.prompt_tokens > 0


def _image(edge: Edge, name: str, side: int = 64, **kw: Any) -> MediaResult:
    stub = image_pb2_grpc.ImageServiceStub(edge.channel)
    request = image_pb2.ImageGenerateRequest(prompt="a cat", width=side, height=side, model=name)
    return collect(stub.Generate(request, **({"metadata": edge.metadata, "timeout": 120} | kw)))


def test_an_image_becomes_our_typed_media_stream(edge: Edge) -> None:
    result = _image(edge, "up-image")
    assert result.kinds[0] == "header" and result.kinds[-1] == "final"
    assert len(result.chunks) > 1  # the test server's small chunks
    assert result.header is not None and result.final is not None
    assert (result.header.mime_type, result.header.width, result.header.height) == (
        "image/png",
        64,
        64,
    )
    assert result.final.sha256 == result.sha256
    assert result.final.total_bytes == len(result.data)
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (64, 64)


def test_speech_streams_on_as_a_wav(edge: Edge) -> None:
    stub = audio_pb2_grpc.AudioServiceStub(edge.channel)
    request = audio_pb2.AudioGenerateRequest(prompt="Hello there", model="up-speech")
    result = collect(stub.Generate(request, metadata=edge.metadata, timeout=120))
    assert result.header is not None and result.final is not None
    assert result.header.mime_type == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(result.data))
    assert rate == result.header.sample_rate and len(samples) > 0
    assert result.header.duration_s == pytest.approx(len(samples) / rate, rel=1e-3)
    with wave.open(io.BytesIO(result.data)) as reader:
        assert reader.getsampwidth() == 2
    assert result.final.sha256 == result.sha256


def test_a_speaking_rate_reaches_the_upstream(edge: Edge) -> None:
    """The rate goes on in the OpenAI body's `speed`: the upstream's Bark speaks at one
    rate only, and its refusal, naming the field, comes back to the caller."""
    stub = audio_pb2_grpc.AudioServiceStub(edge.channel)
    request = audio_pb2.AudioGenerateRequest(prompt="Hello there", model="up-speech", speed=1.5)
    with pytest.raises(grpc.RpcError) as refused:
        collect(stub.Generate(request, metadata=edge.metadata, timeout=120))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "speed" in str(refused.value.details()), refused.value.details()


def test_a_sample_rate_is_refused_not_ignored(edge: Edge) -> None:
    """OpenAI's speech API has no rate to ask for: the edge says so instead of sending a
    WAV at another rate than the one asked."""
    stub = audio_pb2_grpc.AudioServiceStub(edge.channel)
    request = audio_pb2.AudioGenerateRequest(
        prompt="Hello there", model="up-speech", sample_rate=16000
    )
    with pytest.raises(grpc.RpcError) as refused:
        collect(stub.Generate(request, metadata=edge.metadata, timeout=120))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate" in str(refused.value.details()), refused.value.details()


def test_a_cancel_closes_the_upstream_call(edge: Edge, genserve: Upstream) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    metadata = edge.call_id()
    request = _chat(edge, "up-chat", max_new_tokens=400, prompt="Tell me a long story.")
    call = stub.Generate(request, metadata=metadata, timeout=120)
    for _, _response in zip(range(3), call, strict=False):
        pass
    call.cancel()
    request_id = dict(metadata)["x-request-id"]
    # The upstream records the call as cancelled: its connection was closed at once, not
    # left to generate 400 tokens nobody reads.
    rows = _wait_for(lambda: genserve.usage_rows(request_id))
    assert [r["status_code"] for r in rows] == ["CANCELLED"]
    assert rows[0]["completion_tokens"] is None or rows[0]["completion_tokens"] < 400


def test_an_upstream_killed_mid_stream_ends_the_stream_unavailable(
    edge: Edge, genserve: Upstream
) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    request = _chat(edge, "up-chat-killable", max_new_tokens=400, prompt="Tell me a story.")
    received = 0
    with bridge_on(genserve, edge.ports["killable"]) as bridge:
        call = stub.Generate(request, metadata=edge.metadata, timeout=120)
        with pytest.raises(grpc.RpcError) as failure:
            for response in call:
                assert response.HasField("delta"), "a final event: the stream was not cut"
                received += 1
                if received == 3:
                    bridge.kill()
    assert received >= 3
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "incomplete" in (failure.value.details() or "")
    # The next call to a healthy upstream model works.
    deltas, _ = _text(stub.Generate(_chat(edge, "up-chat"), metadata=edge.metadata, timeout=60))
    assert deltas


def test_an_upstream_too_slow_is_deadline_exceeded(edge: Edge) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        _image(edge, "up-image-slow", side=256)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.2 s" in (failure.value.details() or "")
    assert time.monotonic() - started < 60  # not left waiting on the upstream's own pace


def test_an_upstream_429_is_waited_out_or_passed_on_with_its_delay(
    edge: Edge, genserve: Upstream
) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    # Asks for the throttled key's whole budget upstream; a stop sequence ends it at once.
    drain = _chat(edge, "up-chat-throttled", max_new_tokens=BUDGET_DRAIN_TOKENS, stop=[" "])
    _text(stub.Generate(drain, metadata=edge.metadata, timeout=60))
    # The next is refused upstream with Retry-After; the edge waits it out and succeeds.
    metadata = edge.call_id()
    request = _chat(edge, "up-chat-throttled", max_new_tokens=RETRY_TOKENS, stop=[" "])
    _, final = _text(stub.Generate(request, metadata=metadata, timeout=60))
    assert final.usage.completion_tokens >= 1
    request_id = dict(metadata)["x-request-id"]
    # The upstream writes its rows as its calls end: the last may lag ours.
    rows = _wait_for(
        lambda: (found := genserve.usage_rows(request_id)) and len(found) > 1 and found
    )
    assert [r["status_code"] for r in rows] == ["RESOURCE_EXHAUSTED", "OK"]
    refused, served = (datetime.fromisoformat(r["datetime_utc"]) for r in rows)
    # Retry-After is whole seconds (at least 1): the edge waited it, not a guess of its own.
    assert (served - refused).total_seconds() >= 1.0
    # Another budget-sized one would wait a minute: past this model's max_wait_s, so the
    # caller gets RESOURCE_EXHAUSTED and the delay to wait.
    impatient = _chat(edge, "up-chat-impatient", max_new_tokens=BUDGET_DRAIN_TOKENS, stop=[" "])
    with pytest.raises(grpc.RpcError) as failure:
        _text(stub.Generate(impatient, metadata=edge.metadata, timeout=60))
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(failure.value.trailing_metadata() or ())
    assert float(trailing["retry-after"]) >= 1


def test_a_wrong_upstream_key_is_a_clear_error_that_never_shows_the_key(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    with caplog.at_level("DEBUG"), pytest.raises(grpc.RpcError) as failure:
        _text(stub.Generate(_chat(edge, "up-chat-wrong-key"), metadata=edge.metadata))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = failure.value.details() or ""
    assert "refused genserve's credentials" in details
    secret = WRONG_KEY.rsplit(".", 1)[1]
    assert secret not in details and secret not in caplog.text
    assert not any(secret in str(value) for row in _all_edge_rows(edge) for value in row.values())
    # Its health says so too: the upstream refuses the probe's key.
    assert edge.health("genserve.v1.TextService/up-chat-wrong-key") == 2  # NOT_SERVING


def test_an_upstream_down_at_start_is_not_serving_until_it_comes_back(
    edge: Edge, genserve: Upstream
) -> None:
    SERVING, NOT_SERVING = 1, 2
    assert edge.health("genserve.v1.TextService/up-chat-down") == NOT_SERVING
    assert edge.health("genserve.v1.TextService/up-chat") == SERVING
    assert edge.health("genserve.v1.ImageService/up-image") == SERVING
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    with pytest.raises(grpc.RpcError) as failure:
        _text(stub.Generate(_chat(edge, "up-chat-down"), metadata=edge.metadata))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    with bridge_on(genserve, edge.ports["down"]):
        status = _wait_for(
            lambda: edge.health("genserve.v1.TextService/up-chat-down") == SERVING, 30
        )
        assert status, "the model did not recover when its upstream came back"
        deltas, _ = _text(
            stub.Generate(_chat(edge, "up-chat-down"), metadata=edge.metadata, timeout=60)
        )
        assert deltas


def test_a_model_the_upstream_does_not_know_is_not_found(edge: Edge) -> None:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    with pytest.raises(grpc.RpcError) as failure:
        _text(stub.Generate(_chat(edge, "up-chat-unknown"), metadata=edge.metadata))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    details = failure.value.details() or ""
    assert "up-chat-unknown" in details and "404" in details and "no-such-model" in details
