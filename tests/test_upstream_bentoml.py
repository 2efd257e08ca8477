"""A BentoML service as an upstream: a real `bentoml serve` (its own virtual environment,
tests/upstreams/) running the tiny Stable Diffusion pipeline and SmolLM2, behind an edge
genserve whose image and text models are `upstream` engines of kind bentoml."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from genserve.server.manifest import Manifest
from genserve.server.settings import MediaLimits
from genserve.v1 import image_pb2, image_pb2_grpc, text_pb2, text_pb2_grpc
from tests.media_calls import TEST_CHUNK_SIZE, collect
from tests.server_thread import MODEL_STORE, ServerThread, make_settings
from tests.text_calls import collect_text
from tests.upstreams.bentoml_process import BentoMLProcess, free_port

pytestmark = pytest.mark.timeout(600)

SERVING, NOT_SERVING = 1, 2
SEED = 1234


def bentoml_model(name: str, url: str, endpoint: str, **upstream: Any) -> dict[str, Any]:
    spec = {"kind": "bentoml", "base_url": url, "endpoint": endpoint, "health_interval_s": 0.3}
    return {"name": name, "engine": "upstream", "upstream": spec | upstream}


class Edge:
    def __init__(self, server: ServerThread, bento: BentoMLProcess, late_port: int) -> None:
        self.server = server
        self.bento = bento
        self.late_port = late_port
        self.channel = server.channel()

    def health(self, service: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)

    def faults(self, **fault: Any) -> None:
        """The service answers its next calls with an error status (a test-only route)."""
        httpx.post(f"{self.bento.base_url}/faults", json=fault, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("bento-edge")
    bento = BentoMLProcess(MODEL_STORE, log_path=folder / "bentoml.log")
    late_port = free_port()
    url, late = bento.base_url, f"http://127.0.0.1:{late_port}"
    manifest = Manifest.model_validate(
        {
            "text": [
                bentoml_model("bento-text", url, "/generate/text", retries={"backoff_s": 0.05})
                | {"default": True},
                bentoml_model(
                    "bento-text-hasty", url, "/generate/text", timeouts={"first_byte_s": 0.05}
                ),
            ],
            "image": [
                bentoml_model("bento-image", url, "/generate/image", retries={"backoff_s": 0.05})
                | {"default": True},
                bentoml_model("bento-image-late", late, "/generate/image"),
                # BentoML sends its headers with the file: a wait longer than the idle limit.
                bentoml_model(
                    "bento-image-patient",
                    url,
                    "/generate/image",
                    timeouts={"idle_s": 0.05, "first_byte_s": 60},
                ),
            ],
        }
    )
    settings = make_settings(folder, media=MediaLimits(chunk_size=TEST_CHUNK_SIZE))
    try:
        bento.start()
        server = ServerThread(settings, manifest).start()
        try:
            yield Edge(server, bento, late_port)
        finally:
            server.stop()
    finally:
        bento.stop()


def _image(edge: Edge, name: str = "bento-image", **kw: Any) -> Any:
    stub = image_pb2_grpc.ImageServiceStub(edge.channel)
    request = image_pb2.ImageGenerateRequest(
        prompt="a cat", width=64, height=64, num_inference_steps=4, seed=SEED, model=name
    )
    return collect(stub.Generate(request, timeout=120, **kw))


def test_an_image_from_bentoml_is_the_same_file_as_asked_directly(edge: Edge) -> None:
    result = _image(edge)
    assert result.kinds[0] == "header" and result.kinds[-1] == "final"
    assert len(result.chunks) > 1
    assert (result.header.mime_type, result.header.width, result.header.height) == (
        "image/png",
        64,
        64,
    )
    assert result.final.sha256 == result.sha256
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (64, 64)
    direct = httpx.post(
        f"{edge.bento.base_url}/generate/image",
        json={
            "prompt": "a cat",
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "guidance_scale": 7.5,
            "seed": SEED,
        },
        timeout=120,
    )
    direct.raise_for_status()
    assert hashlib.sha256(direct.content).hexdigest() == result.final.sha256


def _text(edge: Edge, name: str, **fields: Any) -> tuple[list[str], text_pb2.TextFinal]:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    request = text_pb2.TextGenerateRequest(
        prompt="What is FastAPI?", model=name, do_sample=False, **fields
    )
    result = collect_text(stub.Generate(request, timeout=120))
    assert result.final is not None
    return result.deltas, result.final


def test_text_streams_piece_by_piece_and_is_counted_here(edge: Edge) -> None:
    deltas, final = _text(edge, "bento-text", max_new_tokens=12)
    assert len(deltas) > 1 and "".join(deltas).strip()
    # BentoML reports no usage: each piece is counted as a token, the prompt estimated.
    assert final.usage.completion_tokens == len(deltas)
    assert final.usage.prompt_tokens > 0
    assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH


def test_a_429_with_retry_after_is_waited_out(edge: Edge) -> None:
    edge.faults(status=429, count=1, retry_after_s=1, endpoint="image")
    started = time.monotonic()
    result = _image(edge)
    assert result.final is not None
    assert time.monotonic() - started >= 1.0  # the upstream's Retry-After, honoured


def test_an_upstream_that_keeps_failing_is_unavailable(edge: Edge) -> None:
    edge.faults(status=503, count=3, endpoint="image")  # one more than the retries allow
    with pytest.raises(grpc.RpcError) as failure:
        _image(edge)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "503" in (failure.value.details() or "")
    assert _image(edge).final is not None  # then it serves again


def test_refused_credentials_are_named_as_ours(edge: Edge) -> None:
    edge.faults(status=401, count=1, endpoint="text")
    with pytest.raises(grpc.RpcError) as failure:
        _text(edge, "bento-text", max_new_tokens=4)
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refused genserve's credentials" in (failure.value.details() or "")


def test_an_upstream_slower_than_its_first_byte_limit_is_deadline_exceeded(edge: Edge) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        _text(edge, "bento-text-hasty", max_new_tokens=4)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_upstream_down_at_start_serves_once_it_comes_up(edge: Edge) -> None:
    service = "genserve.v1.ImageService/bento-image-late"
    assert edge.health(service) == NOT_SERVING
    assert edge.health("genserve.v1.ImageService/bento-image") == SERVING
    late = BentoMLProcess(MODEL_STORE, port=edge.late_port, load="image")
    late.start()
    try:
        deadline = time.monotonic() + 30
        while edge.health(service) != SERVING and time.monotonic() < deadline:
            time.sleep(0.2)
        assert edge.health(service) == SERVING
        assert _image(edge, "bento-image-late").final is not None
    finally:
        late.stop()


def test_the_first_byte_may_take_longer_than_the_idle_limit(edge: Edge) -> None:
    stub = image_pb2_grpc.ImageServiceStub(edge.channel)
    request = image_pb2.ImageGenerateRequest(
        prompt="a cat", width=128, height=128, num_inference_steps=10, model="bento-image-patient"
    )
    result = collect(stub.Generate(request, timeout=120))
    assert result.final is not None and result.final.sha256 == result.sha256
