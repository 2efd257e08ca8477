"""Models by name: selection, ListModels, LoadModel/UnloadModel with draining, LRU eviction
under a memory budget, per-model health, on-demand models that do not block each other,
seeds that hold under concurrency, bounded memory for a stalled reader, reflection v1."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from genserve.contract import SPECS
from genserve.server.manifest import LoadPolicy, Manifest, Modality, load_manifest, manifest_path
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from tests.media_calls import collect, png_bytes
from tests.server_thread import ServerThread, make_settings, wait_until
from tests.text_calls import generate, greedy, request

DEFAULT_TEXT = "smollm2-135m-instruct"
SERIAL_TEXT = "smollm2-135m-instruct-serial"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MiB = 1024 * 1024


def models(channel: grpc.Channel) -> dict[str, models_pb2.ModelInfo]:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    return {m.name: m for m in stub.ListModels(models_pb2.ListModelsRequest()).models}


def health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- selection --------------------------------------------------------------------------


def test_two_text_models_under_two_engines_are_selected_by_name(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    default = generate(channel, greedy(max_new_tokens=8), request_id="by-default")
    serial = generate(channel, greedy(max_new_tokens=8, model=SERIAL_TEXT), request_id="serial")
    named = generate(channel, greedy(max_new_tokens=8, model=DEFAULT_TEXT), request_id="named")
    # Same weights, greedy: both engines give the same answer.
    assert default.text == serial.text == named.text
    assert tiny_server.wait_for_usage_row("by-default")["model"] == DEFAULT_TEXT
    assert tiny_server.wait_for_usage_row("serial")["model"] == SERIAL_TEXT
    assert tiny_server.wait_for_usage_row("named")["model"] == DEFAULT_TEXT

    listed = models(channel)
    assert listed[DEFAULT_TEXT].is_default and listed[DEFAULT_TEXT].engine == "llama.cpp"
    assert not listed[SERIAL_TEXT].is_default
    assert listed[SERIAL_TEXT].engine == "transformers-serial"
    assert listed[SERIAL_TEXT].load_policy == "lazy"
    assert listed[SERIAL_TEXT].state == "loaded"  # the lazy model loaded on first use
    assert listed[SERIAL_TEXT].memory_bytes > 100 * MiB  # 135M parameters, fp32
    assert {m.modality for m in listed.values()} == {spec.name for spec in SPECS}


@pytest.mark.parametrize(
    ("model", "expected"),
    [("no-such-model", "no text model named 'no-such-model'"), ("tiny-bark", "no text model")],
)
def test_an_unknown_model_or_one_of_another_modality_is_not_found(
    channel: grpc.Channel, model: str, expected: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        generate(channel, greedy(max_new_tokens=2, model=model))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert (error.value.details() or "").startswith("model: ")
    assert expected in (error.value.details() or "")


def test_health_is_per_model_and_per_service(channel: grpc.Channel) -> None:
    assert health(channel, "genserve.v1.TextService") == SERVING
    assert health(channel, f"genserve.v1.TextService/{DEFAULT_TEXT}") == SERVING
    assert health(channel, "genserve.v1.ImageService/tiny-stable-diffusion") == SERVING


# -- load and unload --------------------------------------------------------------------


def test_unload_drains_the_request_in_flight_then_refuses_until_loaded_again(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    stream = text_pb2_grpc.TextServiceStub(channel).Generate(
        greedy(max_new_tokens=48, model=SERIAL_TEXT), timeout=120
    )
    responses = iter(stream)
    assert next(responses).HasField("delta")  # generating now

    with ThreadPoolExecutor(1) as pool:
        unloading = pool.submit(
            stub.UnloadModel, models_pb2.UnloadModelRequest(name=SERIAL_TEXT), timeout=120
        )
        wait_until(lambda: models(channel)[SERIAL_TEXT].state == "draining" or None, 10)
        # New requests are refused while it drains, with a code clients do not retry.
        with pytest.raises(grpc.RpcError) as refused:
            generate(channel, greedy(max_new_tokens=2, model=SERIAL_TEXT))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "being unloaded" in (refused.value.details() or "")
        rest = list(responses)  # the request in flight runs to its end
        assert rest[-1].final.usage.completion_tokens == 48
        info = unloading.result(timeout=60)
    assert info.state == "unloaded" and info.memory_bytes == 0
    assert health(channel, f"genserve.v1.TextService/{SERIAL_TEXT}") == NOT_SERVING

    with pytest.raises(grpc.RpcError) as error:
        generate(channel, greedy(max_new_tokens=2, model=SERIAL_TEXT))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LoadModel" in (error.value.details() or "")

    loaded = stub.LoadModel(models_pb2.LoadModelRequest(name=SERIAL_TEXT), timeout=120)
    assert loaded.state == "loaded" and loaded.memory_bytes > 0
    assert health(channel, f"genserve.v1.TextService/{SERIAL_TEXT}") == SERVING
    assert generate(channel, greedy(max_new_tokens=2, model=SERIAL_TEXT)).final is not None


def test_load_or_unload_of_an_unknown_model_is_not_found(channel: grpc.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.UnloadModel(models_pb2.UnloadModelRequest(name="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.LoadModel(models_pb2.LoadModelRequest(name=""), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- a memory budget and LRU eviction ----------------------------------------------------


def embedding_models(policy: LoadPolicy, *names: str) -> Manifest:
    """Copies of the tiny profile's embedding model (~87 MB each) under other names."""
    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.EMBEDDING)
    assert spec is not None
    return Manifest(
        embedding=tuple(
            spec.model_copy(update={"name": n, "load_policy": policy, "default": i == 0})
            for i, n in enumerate(names)
        )
    )


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(tmp_path_factory.mktemp("budget"), memory_budget_mb=200)
    server = ServerThread(settings, embedding_models(LoadPolicy.LAZY, "a", "b", "c")).start()
    yield server
    server.stop()


def embed(channel: grpc.Channel, model: str) -> embedding_pb2.EmbedResponse:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    response: embedding_pb2.EmbedResponse = stub.Embed(
        embedding_pb2.EmbedRequest(texts=["hello"], model=model), timeout=60
    )
    return response


def test_lazy_models_are_evicted_least_recently_used_first_under_the_budget(
    budget_server: ServerThread,
) -> None:
    channel = budget_server.channel()
    assert {m.state for m in models(channel).values()} == {"unloaded"}  # nothing loaded yet
    assert embed(channel, "a").model == "a"
    assert embed(channel, "b").model == "b"  # two fit in 200 MB
    assert embed(channel, "a").model == "a"  # a is now the more recently used
    states = {n: m.state for n, m in models(channel).items()}
    assert states == {"a": "loaded", "b": "loaded", "c": "unloaded"}

    assert embed(channel, "c").model == "c"  # a third does not fit: b, least recent, goes
    listed = models(channel)
    assert {n: m.state for n, m in listed.items()} == {
        "a": "loaded",
        "b": "unloaded",
        "c": "loaded",
    }
    held = sum(m.memory_bytes for m in listed.values())
    assert 0 < held <= 200 * MiB
    # an evicted lazy model comes back on its next use (it was not unloaded by an operator)
    assert embed(channel, "b").model == "b"
    assert models(channel)["a"].state == "unloaded"


# -- on-demand models do not block each other ----------------------------------------------


def test_on_demand_models_of_different_modalities_do_not_wait_for_each_other(
    tmp_path: Path,
) -> None:
    tiny = load_manifest(manifest_path("tiny"))
    text, embedding = tiny.spec_for(Modality.TEXT), tiny.spec_for(Modality.EMBEDDING)
    assert text is not None and embedding is not None
    on_demand = {"load_policy": LoadPolicy.ON_DEMAND}
    manifest = Manifest(
        text=(text.model_copy(update=on_demand),),
        embedding=(embedding.model_copy(update=on_demand),),
    )
    server = ServerThread(make_settings(tmp_path), manifest).start()
    try:
        channel = server.channel()
        stream = text_pb2_grpc.TextServiceStub(channel).Generate(
            greedy(max_new_tokens=200), timeout=120
        )
        responses = iter(stream)
        assert next(responses).HasField("delta")  # the text model is loaded and running
        # The embedding model loads and answers while the text stream is still running.
        assert embed(channel, embedding.name).embeddings
        assert server.server.registry.get(text.name).in_use == 1
        stream.cancel()
    finally:
        server.stop()


# -- seeds hold while other requests run -----------------------------------------------------


def audio_sha(channel: grpc.Channel, seed: int) -> str:
    """The digest of the samples: the file's generation record holds each call's own
    request id, so two files with the same samples differ in that record."""
    stub = audio_pb2_grpc.AudioServiceStub(channel)
    request = audio_pb2.AudioGenerateRequest(prompt="hi", seed=seed, model="tiny-bark")
    result = collect(stub.Generate(request))
    assert result.final is not None
    samples, _ = soundfile.read(io.BytesIO(result.data), dtype="int16")
    return hashlib.sha256(samples.tobytes()).hexdigest()


def sampled_text(channel: grpc.Channel, seed: int) -> str:
    return generate(
        channel, request(max_new_tokens=24, do_sample=True, seed=seed, model=SERIAL_TEXT)
    ).text


def test_same_seed_same_output_while_other_requests_run(channel: grpc.Channel) -> None:
    """Bark and transformers' generate() draw from torch's global generator; run side by
    side, each must still give what it gives alone."""
    alone_audio = audio_sha(channel, seed=5)
    alone_text = sampled_text(channel, seed=9)
    with ThreadPoolExecutor(4) as pool:
        audio = [pool.submit(audio_sha, channel, 5) for _ in range(2)]
        text = [pool.submit(sampled_text, channel, 9) for _ in range(2)]
        assert [f.result(timeout=120) for f in audio] == [alone_audio] * 2
        assert [f.result(timeout=120) for f in text] == [alone_text] * 2


# -- a stalled reader costs bounded memory ---------------------------------------------------


STALL_S = 10.0
RSS_BOUND = 50 * MiB


def test_a_stalled_reader_holds_bounded_memory(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    """Nobody reads a 512-token text stream and a 25-frame video for a while: memory stays
    flat (each stream's channel is bounded; the media producer waits for its reader)."""
    text = text_pb2_grpc.TextServiceStub(channel).Generate(
        greedy(max_new_tokens=512, model=DEFAULT_TEXT), timeout=180
    )
    video_request = video_pb2.VideoGenerateRequest(
        image=png_bytes(), num_frames=25, num_inference_steps=1, seed=3
    )
    video = video_pb2_grpc.VideoServiceStub(channel).Generate(video_request, timeout=180)
    try:
        text_events, video_events = iter(text), iter(video)
        next(text_events)
        seen = [next(video_events)]
        while not seen[-1].HasField("chunk"):  # inference done, the file is being written
            seen.append(next(video_events))
        before = peak = rss_bytes()  # from here on, nobody reads
        deadline = time.monotonic() + STALL_S
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes())
            time.sleep(0.5)
        assert peak - before < RSS_BOUND, f"RSS grew {(peak - before) / MiB:.0f} MB"
        # the streams are intact once read
        assert list(text_events)[-1].HasField("final")
        result = collect([*seen, *video_events])
        assert result.final is not None and result.final.sha256 == result.sha256
    finally:
        text.cancel()
        video.cancel()


# -- reflection ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_both_protocol_versions(channel: grpc.Channel, version: str) -> None:
    method = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(method(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"genserve.v1.TextService", "genserve.v1.ModelService"} <= names
