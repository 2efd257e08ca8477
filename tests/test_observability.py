"""Request IDs, the usage log, the access log, health during generation, INTERNAL errors."""

from __future__ import annotations

import logging
import re
from datetime import datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.v1 import models_pb2, models_pb2_grpc, text_pb2_grpc
from genserve.server.background import ServerThread
from tests.text_calls import generate, greedy

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_request_id_is_echoed(channel: grpc.Channel) -> None:
    result = generate(channel, greedy(max_new_tokens=1), request_id="caller-chose-this")
    assert result.request_id == "caller-chose-this"


def test_request_id_is_generated_when_absent(channel: grpc.Channel) -> None:
    result = generate(channel, greedy(max_new_tokens=1))
    assert result.request_id is not None and re.fullmatch(r"[0-9a-f]{32}", result.request_id)


def test_unsafe_request_id_is_replaced(channel: grpc.Channel) -> None:
    result = generate(
        channel, greedy(max_new_tokens=1), request_id="has spaces <script>" + "x" * 200
    )
    assert result.request_id is not None and re.fullmatch(r"[0-9a-f]{32}", result.request_id)


def test_ok_call_gets_a_complete_usage_row(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    result = generate(channel, greedy(max_new_tokens=4), request_id="usage-ok")
    row = tiny_server.wait_for_usage_row("usage-ok")
    assert row["status_code"] == "OK" and row["successful"] == 1
    assert row["method"] == "/genserve.v1.TextService/Generate"
    assert "127.0.0.1" in row["client_address"] or "::1" in row["client_address"]
    assert datetime.fromisoformat(row["datetime_utc"]).utcoffset() is not None
    assert row["response_time_ms"] >= row["time_to_first_message_ms"] > 0
    assert row["messages_out"] == len(result.deltas) + 1
    assert row["bytes_out"] > 0
    assert row["prompt_tokens"] == result.final.usage.prompt_tokens  # type: ignore[union-attr]
    assert row["completion_tokens"] == 4
    assert row["inference_ms"] > 0


def test_every_log_line_of_a_call_carries_its_request_id(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.RpcError):
            generate(channel, greedy(top_p=3.0), request_id="log-joined")
        generate(channel, greedy(max_new_tokens=1), request_id="log-joined-ok")
    access = [r for r in caplog.records if r.name == "genserve.access"]
    by_id = {getattr(r, "request_id", None): r for r in access}
    assert "INVALID_ARGUMENT" in by_id["log-joined"].getMessage()
    assert "OK" in by_id["log-joined-ok"].getMessage()
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert rejected and all(getattr(r, "request_id", None) == "log-joined" for r in rejected)


def test_health_answers_while_a_long_generation_runs(channel: grpc.Channel) -> None:
    stub = text_pb2_grpc.TextServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    call = stub.Generate(greedy(max_new_tokens=200))
    stream = iter(call)
    next(stream)  # generation is running
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert status.status == SERVING
    # ... and it is still running after the check answered
    response = next(stream)
    assert response.HasField("delta")
    call.cancel()


def test_health_per_modality(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service)).status

    assert status("") == SERVING
    assert status("genserve.v1.TextService") == SERVING
    for modality in ("Audio", "Image", "Video", "Mesh", "Embedding"):
        assert status(f"genserve.v1.{modality}Service") == SERVING


def test_model_listing(channel: grpc.Channel) -> None:
    listing = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
    by_modality = {m.modality: m for m in listing.models}
    text = by_modality["text"]
    assert text.name == "smollm2-135m-instruct"
    assert text.state == "loaded" and text.load_policy == "preload"
    assert text.device in {"cpu", "cuda"} and text.dtype == "float32"
    assert by_modality["image"].name == "tiny-stable-diffusion"
    assert all(m.state == "loaded" for m in listing.models), listing
