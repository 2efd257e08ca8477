"""The REST bridge over HTTP, against the real app and a real gRPC server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import av
import grpc
import httpx
import numpy as np
import open3d
import pytest
import soundfile
from PIL import Image

from genserve.bridge.settings import BridgeSettings, Timeouts
from genserve.contract import SPECS
from genserve.contract.limits import TextLimits
from genserve.server.errors import HTTP_STATUS_BY_GRPC_CODE
from genserve.v1 import models_pb2, models_pb2_grpc, text_pb2, text_pb2_grpc
from tests import speech
from tests.bridge_thread import BridgeThread
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread, settled_stats, wait_until
from tests.text_calls import served_text_engine

HTTP_TIMEOUT_S = 120


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


# -- the seed's routes ------------------------------------------------------------------


def test_text_route_returns_plain_text(http: httpx.Client) -> None:
    response = http.get(
        "/generate/text", params={"prompt": "What is FastAPI?", "max_new_tokens": 8}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.strip()
    assert float(response.headers["x-response-time"].removesuffix("ms")) > 0


def test_text_route_streams_server_sent_events(http: httpx.Client) -> None:
    response = http.get(
        "/generate/text",
        params={
            "prompt": "What is FastAPI?",
            "max_new_tokens": 8,
            "stream": "true",
            "do_sample": "false",
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    deltas = [json.loads(d)["text"] for name, d in events if name == "delta"]
    assert len(deltas) >= 3
    final = json.loads(events[-1][1])
    assert events[-1][0] == "final" and final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 8


def test_text_json_body(http: httpx.Client) -> None:
    response = http.post(
        "/generate/text", json={"prompt": "Hi", "max_new_tokens": 3, "stop": ["zzz"]}
    )
    assert response.status_code == 200 and response.text


def test_json_bodies_are_strict(http: httpx.Client) -> None:
    response = http.post("/generate/text", json={"prompt": "Hi", "max_new_tokens": "3"})
    assert response.status_code == 422
    assert "max_new_tokens" in response.json()["error"]["message"]


def test_image_route_returns_a_png(http: httpx.Client) -> None:
    response = http.get("/generate/image", params={"prompt": "a cozy living room"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("inline; filename=")
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_audio_route_returns_a_wav(http: httpx.Client) -> None:
    params = {"prompt": "Hello", "preset": "v2/en_speaker_9", "model": "tiny-bark"}
    response = http.get("/generate/audio", params=params)
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24_000 and len(samples) > 0


def test_video_route_takes_a_multipart_image(http: httpx.Client) -> None:
    response = http.post(
        "/generate/video",
        files={"image": ("room.png", png_bytes(), "image/png")},
        data={"num_frames": "5", "num_inference_steps": "1"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content), mode="r") as container:
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_3d_route_is_an_obj_attachment(http: httpx.Client, tmp_path: object) -> None:
    response = http.get(
        "/generate/3d", params={"prompt": 'chair"\r\nSet-Cookie: x=1', "num_inference_steps": 2}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "model/obj"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="mesh-') and disposition.endswith('.obj"')
    assert "set-cookie" not in response.headers
    path = __import__("pathlib").Path(str(tmp_path)) / "mesh.obj"
    path.write_bytes(response.content)
    assert len(open3d.io.read_triangle_mesh(path).triangles) > 0


def test_media_progress_as_server_sent_events(http: httpx.Client) -> None:
    response = http.get(
        "/generate/image",
        params={"prompt": "room", "num_inference_steps": 3},
        headers={"Accept": "text/event-stream"},
    )
    events = sse_events(response.text)
    kinds = [name for name, _ in events]
    assert kinds[0] == "header" and kinds[-1] == "final"
    assert [json.loads(d)["step"] for n, d in events if n == "progress"] == [1, 2, 3]
    data = b"".join(base64.b64decode(json.loads(d)["data_b64"]) for n, d in events if n == "chunk")
    assert hashlib.sha256(data).hexdigest() == json.loads(events[-1][1])["sha256"]
    assert Image.open(io.BytesIO(data)).format == "PNG"


def test_text_route_answers_json_when_asked(http: httpx.Client) -> None:
    response = http.get(
        "/generate/text",
        params={"prompt": "Hi", "max_new_tokens": 3, "do_sample": "false"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "".join(delta["text"] for delta in body["deltas"])
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_embed_route_get_and_post(http: httpx.Client) -> None:
    texts = ["How do I build an API?", "How to create an API?"]
    for response in (
        http.get("/embed", params={"texts": texts}),
        http.post("/embed", json={"texts": texts, "model": "all-MiniLM-L6-v2"}),
    ):
        assert response.status_code == 200, response.text
        body = response.json()
        vectors = np.array([e["values"] for e in body["embeddings"]])
        assert vectors.shape == (2, 384) and body["model"] == "all-MiniLM-L6-v2"
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)


# -- request IDs, errors ----------------------------------------------------------------


def test_request_id_joins_bridge_server_and_usage_logs(
    http: httpx.Client, tiny_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = http.get(
            "/generate/text",
            params={"prompt": "Hi", "max_new_tokens": 2},
            headers={"X-Request-ID": "joined-123"},
        )
        assert response.headers["x-request-id"] == "joined-123"

        def joined_loggers() -> set[str] | None:
            names = {
                r.name for r in caplog.records if getattr(r, "request_id", None) == "joined-123"
            }
            return names if {"genserve.bridge.access", "genserve.access"} <= names else None

        # Both access lines are written as each side finishes its call, which can be just
        # after the client has the whole body: wait for them, boundedly.
        assert wait_until(joined_loggers, timeout=10)
    row = tiny_server.wait_for_usage_row("joined-123")
    assert row["method"] == "/genserve.v1.TextService/Generate" and row["status_code"] == "OK"


def test_server_side_invalid_argument_is_422_with_the_request_id(http: httpx.Client) -> None:
    # within the bridge's bounds, beyond the server's pixel limit
    response = http.get("/generate/image", params={"prompt": "x", "width": 2048, "height": 2048})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("width:")
    assert error["request_id"] == response.headers["x-request-id"]


def test_unreachable_server_is_503() -> None:
    timeouts = Timeouts(text=5, health=1, limits=1)
    with socket_free_port() as port:
        thread = BridgeThread(BridgeSettings(grpc_target=f"localhost:{port}", timeouts=timeouts))
        thread.start()
    try:
        with httpx.Client(base_url=thread.url, timeout=30) as client:
            # no limits to read at start: the document states the server's defaults
            document = client.get("/openapi.json").json()
            max_new_tokens = document["components"]["schemas"]["TextBody"]["properties"][
                "max_new_tokens"
            ]
            assert max_new_tokens["anyOf"][0]["maximum"] == TextLimits().max_new_tokens
            response = client.get("/generate/text", params={"prompt": "hi"})
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "UNAVAILABLE"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert client.get("/healthz").status_code == 200
    finally:
        thread.stop()


def test_deadline_is_504(tiny_server: ServerThread) -> None:
    thread = BridgeThread(
        BridgeSettings(grpc_target=f"localhost:{tiny_server.port}", timeouts=Timeouts(text=0.5))
    ).start()
    try:
        with httpx.Client(base_url=thread.url, timeout=30) as client:
            long_answer: dict[str, str | int] = {
                "prompt": "Write a long essay on the history of computing.",
                "max_new_tokens": 2000,
            }
            response = client.get("/generate/text", params=long_answer)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    finally:
        thread.stop()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_status_table(code: grpc.StatusCode, status: int) -> None:
    assert HTTP_STATUS_BY_GRPC_CODE.get(code, 500) == status


def test_client_disconnect_cancels_the_generation(
    bridge: BridgeThread, tiny_server: ServerThread
) -> None:
    engine = served_text_engine(tiny_server)
    before = settled_stats(engine)
    params: dict[str, str | int] = {
        "prompt": "Tell me a story",
        "max_new_tokens": 400,
        "stream": "true",
    }
    with (
        httpx.Client(base_url=bridge.url, timeout=60) as client,
        client.stream(
            "GET", "/generate/text", params=params, headers={"X-Request-ID": "walks-away"}
        ) as response,
    ):
        lines = response.iter_lines()
        deltas = 0
        for line in lines:
            if line.startswith("event: delta"):
                deltas += 1
            if deltas >= 3:
                break
    # the HTTP client is gone: the bridge cancels the gRPC call, the model stops
    assert engine.wait_idle(60)
    after = engine.stats()
    assert after.cancelled == before.cancelled + 1
    assert after.tokens_generated - before.tokens_generated < 400
    assert tiny_server.wait_for_usage_row("walks-away")["status_code"] == "CANCELLED"


# -- health and metrics -----------------------------------------------------------------


def test_readyz_reports_each_modality(http: httpx.Client) -> None:
    body = http.get("/readyz").json()
    assert body["ready"] is True
    assert set(body["modalities"]) == {spec.name for spec in SPECS}
    assert set(body["modalities"].values()) == {"SERVING"}


def test_bridge_metrics(http: httpx.Client) -> None:
    http.get("/generate/text", params={"prompt": "Hi", "max_new_tokens": 2})
    counted = 'genserve_bridge_requests_total{code="200",method="GET",route="/generate/text"}'

    # a request is counted when its last byte is sent, which may trail the client a little
    def scraped() -> str | None:
        body = http.get("/metrics").text
        return body if counted in body else None

    text = wait_until(scraped, 10)
    assert "genserve_bridge_request_duration_seconds_bucket" in text
    assert "genserve_bridge_time_to_first_byte_seconds_bucket" in text
    assert "genserve_bridge_in_flight_requests" in text
    assert "genserve_bridge_tokens_generated_total" in text


def test_server_metrics(tiny_server: ServerThread, http: httpx.Client) -> None:
    http.get("/generate/text", params={"prompt": "Hi", "max_new_tokens": 2})
    port = tiny_server.server.metrics_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert (
        'genserve_grpc_requests_total{code="OK",method="/genserve.v1.TextService/Generate"}' in text
    )
    assert "genserve_grpc_time_to_first_message_seconds_bucket" in text
    assert "genserve_grpc_in_flight_requests" in text
    assert 'genserve_model_queue_depth{modality="text",model="smollm2-135m-instruct"}' in text
    tokens = [
        line for line in text.splitlines() if line.startswith("genserve_tokens_generated_total")
    ]
    assert tokens and float(tokens[0].split()[-1]) > 0


# -- the OpenAI-compatible API, through the official SDK ----------------------------------


@pytest.fixture(scope="module")
def openai_client(bridge: BridgeThread):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{bridge.url}/v1", api_key="unused", max_retries=0)


def test_openai_models(openai_client) -> None:  # type: ignore[no-untyped-def]
    ids = {m.id for m in openai_client.models.list()}
    assert {"smollm2-135m-instruct", "all-MiniLM-L6-v2"} <= ids


def test_openai_chat(openai_client) -> None:  # type: ignore[no-untyped-def]
    completion = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is FastAPI?"}],
        max_tokens=6,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 6


def test_openai_chat_stream(openai_client) -> None:  # type: ignore[no-untyped-def]
    stream = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) >= 3
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_openai_chat_error_shape(openai_client) -> None:  # type: ignore[no-untyped-def]
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as error:
        openai_client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], top_p=5
        )
    assert error.value.status_code == 422
    assert "top_p" in str(error.value.body)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        ),
        lambda c: c.embeddings.create(model="smollm2-135m-instruct", input=["hi"]),
        lambda c: c.images.generate(model="dall-e-3", prompt="a room", size="64x64"),
        lambda c: c.audio.speech.create(model="tts-1", voice="alloy", input="Hello"),
    ],
    ids=["chat", "embeddings", "images", "speech"],
)
def test_openai_unknown_model_is_404_model_not_found(openai_client, call) -> None:  # type: ignore[no-untyped-def]
    import openai

    with pytest.raises(openai.NotFoundError) as error:
        call(openai_client)
    body = error.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("model_not_found", "model")
    assert body["request_id"]


def test_openai_embeddings(openai_client) -> None:  # type: ignore[no-untyped-def]
    result = openai_client.embeddings.create(
        model="all-MiniLM-L6-v2", input=["How do I build an API?", "How to create an API?"]
    )
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert result.usage.prompt_tokens > 0


def test_openai_images(openai_client) -> None:  # type: ignore[no-untyped-def]
    result = openai_client.images.generate(prompt="a cozy room", size="64x64")
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (64, 64)


def test_openai_speech(openai_client) -> None:  # type: ignore[no-untyped-def]
    response = openai_client.audio.speech.create(
        model="tiny-bark", voice="alloy", input="Hello there", response_format="wav"
    )
    samples, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24_000 and len(samples) > 0


def test_openai_single_stop_string_and_single_input_are_bounded_as_strings(
    openai_client,  # type: ignore[no-untyped-def]
) -> None:
    # A list's bound (4 stop sequences, 64 texts) is not a single string's length bound.
    completion = openai_client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        stop="\n\nUser:",
    )
    assert completion.choices[0].finish_reason in ("length", "stop")
    long_text = "How do I declare a request body with Pydantic in FastAPI? " * 3
    result = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=long_text)
    assert len(result.data) == 1 and len(result.data[0].embedding) == 384


# -- speech-to-text: the seed route and OpenAI's, with real speech ---------------------------

MAX_WER = 0.3


@pytest.fixture(scope="module")
def transcribing(http: httpx.Client) -> None:
    """The tiny profile serves transcription: a missing engine or model is a failure."""
    status = http.get("/readyz").json()["modalities"].get("transcription")
    assert status == "SERVING", f"the server does not serve transcription ({status})"


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speech.speak(speech.SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")


@pytest.mark.usefixtures("transcribing")
def test_transcribe_route_answers_plain_text(http: httpx.Client, speech_wav: bytes) -> None:
    response = http.post(
        "/transcribe",
        files={"audio": ("sentence.wav", speech_wav, "audio/wav")},
        data={"language": "en"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert speech.word_error_rate(speech.SENTENCE, response.text) < MAX_WER, response.text


@pytest.mark.usefixtures("transcribing")
def test_transcribe_route_answers_json_or_events(http: httpx.Client, speech_wav: bytes) -> None:
    files = {"audio": ("sentence.wav", speech_wav, "audio/wav")}
    response = http.post("/transcribe", files=files, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert speech.word_error_rate(speech.SENTENCE, body["text"]) < MAX_WER, body
    assert body["language"] == "en"
    assert body["duration_s"] == pytest.approx(speech.duration_s(speech_wav), abs=0.1)
    starts = [segment["start_s"] for segment in body["segments"]]
    assert starts == sorted(starts) and body["segments"][-1]["end_s"] <= body["duration_s"] + 0.5

    streamed = http.post("/transcribe", files=files, data={"stream": "true"})
    events = sse_events(streamed.text)
    assert {name for name, _ in events[:-1]} == {"segment"} and events[-1][0] == "final"
    text = "".join(json.loads(data)["text"] for name, data in events[:-1])
    assert speech.word_error_rate(speech.SENTENCE, text) < MAX_WER, text


@pytest.mark.usefixtures("transcribing")
def test_transcribe_route_refuses_what_is_not_audio(http: httpx.Client) -> None:
    response = http.post("/transcribe", files={"audio": ("x.wav", png_bytes(), "audio/wav")})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["message"].startswith("audio:")
    assert http.get("/readyz").json()["modalities"]["transcription"] == "SERVING"


@pytest.mark.usefixtures("transcribing")
@pytest.mark.parametrize("response_format", ["json", "text", "verbose_json"])
def test_openai_transcriptions(openai_client, speech_wav: bytes, response_format: str) -> None:  # type: ignore[no-untyped-def]
    result = openai_client.audio.transcriptions.create(
        model="whisper-1",  # OpenAI's name: the server's default transcription model
        file=("sentence.wav", speech_wav, "audio/wav"),
        language="en",
        response_format=response_format,
    )
    text = result if response_format == "text" else result.text
    assert speech.word_error_rate(speech.SENTENCE, text) < MAX_WER, text
    if response_format == "verbose_json":
        assert result.language == "en"
        assert result.duration == pytest.approx(speech.duration_s(speech_wav), abs=0.1)
        assert [s.id for s in result.segments] == list(range(len(result.segments)))
        assert "".join(s.text for s in result.segments).strip() == text


@pytest.mark.usefixtures("transcribing")
def test_openai_transcription_of_an_unknown_model_is_404(openai_client, speech_wav: bytes) -> None:  # type: ignore[no-untyped-def]
    import openai

    with pytest.raises(openai.NotFoundError) as error:
        openai_client.audio.transcriptions.create(
            model="no-such-whisper", file=("sentence.wav", speech_wav, "audio/wav")
        )
    body = error.value.body
    assert isinstance(body, dict) and (body["code"], body["param"]) == ("model_not_found", "model")


# -- a stream that fails after it began ---------------------------------------------------

FAILING_MODEL = "fails-mid-stream"


class StreamThenFail(text_pb2_grpc.TextServiceServicer):
    """A real gRPC server's text stream that fails after its first delta, as a model whose
    engine dies mid-generation would."""

    def Generate(self, request, context):  # type: ignore[no-untyped-def]
        yield text_pb2.TextGenerateResponse(delta=text_pb2.TextDelta(text="Hello"))
        context.abort(grpc.StatusCode.INTERNAL, "the engine failed mid-stream")


class OneTextModel(models_pb2_grpc.ModelServiceServicer):
    def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        info = models_pb2.ModelInfo(name=FAILING_MODEL, modality="text", is_default=True)
        return models_pb2.ListModelsResponse(models=[info])


@pytest.fixture(scope="module")
def failing_bridge() -> Iterator[BridgeThread]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    text_pb2_grpc.add_TextServiceServicer_to_server(StreamThenFail(), server)
    models_pb2_grpc.add_ModelServiceServicer_to_server(OneTextModel(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    thread = BridgeThread(BridgeSettings(grpc_target=f"127.0.0.1:{port}")).start()
    yield thread
    thread.stop()
    server.stop(grace=None)


def test_openai_stream_error_after_the_first_chunk_is_an_error_event(
    failing_bridge: BridgeThread,
) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{failing_bridge.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=FAILING_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"X-Request-ID": "fails-late"},
    )
    contents = []
    with pytest.raises(openai.APIError) as error:  # not a dropped connection
        for chunk in stream:
            contents.append(chunk.choices[0].delta.content)
    assert contents == ["", "Hello"]
    body = error.value.body
    assert isinstance(body, dict), type(error.value)
    assert body["code"] == "internal" and body["request_id"] == "fails-late"
    assert body["message"] == "the engine failed mid-stream"


def test_openai_stream_ends_after_its_error_event(failing_bridge: BridgeThread) -> None:
    body = {"model": FAILING_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(base_url=failing_bridge.url, timeout=30) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    last = json.loads(sse_events(response.text)[-1][1])  # no [DONE] after it
    assert last["error"]["type"] == "api_error" and last["error"]["code"] == "internal"


def test_seed_stream_error_after_the_first_delta_is_an_error_event(
    failing_bridge: BridgeThread,
) -> None:
    with httpx.Client(base_url=failing_bridge.url, timeout=30) as client:
        response = client.get("/generate/text", params={"prompt": "hi", "stream": "true"})
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["delta", "error"]
    error = json.loads(events[-1][1])
    assert (error["code"], error["status"]) == ("INTERNAL", 500)


class socket_free_port:  # a context manager, named like a function
    """A port nobody listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
