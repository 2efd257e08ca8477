"""The bridge under hostile or careless clients, against a real server: work for a client
that left is cancelled on every route, oversized bodies are refused before they are
read, a full queue's 429 says when to retry, and readiness follows the server's table."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import httpx
import pytest

from genserve.bridge.body_limit import body_caps
from genserve.bridge.routes_openai import TRANSCRIPTIONS_PATH, UPLOAD_ROUTES
from genserve.bridge.settings import BridgeSettings
from genserve.contract import SPECS, ModalitySpec
from genserve.contract.limits import MediaLimits
from genserve.contract.modalities.transcription import TRANSCRIPTION
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from tests.bridge_thread import BridgeThread
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread, make_settings, settled_stats, wait_until
from tests.text_calls import served_text_engine

HTTP_TIMEOUT_S = 120
GIVE_UP_AFTER_S = 1.0  # how long the impatient client waits
CANCEL_WITHIN_S = 5.0  # from the client's leaving to the server's cancel (was: never)
MiB = 1024 * 1024


def wire_bytes(bridge: BridgeThread, method: str, path: str, **request: Any) -> bytes:
    """The request as httpx would send it (headers, multipart and all), as bytes."""
    with httpx.Client(base_url=bridge.url) as client:
        built = client.build_request(method, path, **request)
    target = built.url.raw_path.decode()
    head = "".join(f"{k}: {v}\r\n" for k, v in built.headers.items())
    return f"{method} {target} HTTP/1.1\r\n{head}\r\n".encode() + built.read()


def abandon(bridge: BridgeThread, method: str, path: str, **request: Any) -> float:
    """Sends the request, reads what comes for GIVE_UP_AFTER_S and hangs up, as `curl -m 1`
    would, whether the answer had begun or not; returns when it left (time.monotonic())."""
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as conn:
        conn.sendall(wire_bytes(bridge, method, path, **request))
        deadline = time.monotonic() + GIVE_UP_AFTER_S
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            try:
                received = conn.recv(65536)
            except TimeoutError:
                break
            assert received, "the bridge hung up first"
            assert not received.startswith(b"HTTP/1.1 4"), received  # no refusal: it ran
    return time.monotonic()


def assert_cancelled(server: ServerThread, request_id: str) -> Any:
    row = server.wait_for_usage_row(request_id, timeout=CANCEL_WITHIN_S + 5)
    assert row["status_code"] == "CANCELLED", dict(row)
    return row


# -- 1. a client that leaves cancels its work --------------------------------------------


# Greedy decoding, which runs to max_new_tokens on this prompt: the model would be busy
# for many seconds if nothing stopped it.
LONG_ANSWER = {"prompt": "What is FastAPI?", "max_new_tokens": 300, "do_sample": False}
LONG_CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "What is FastAPI?"}],
    "max_tokens": 300,
    "temperature": 0,
}
TEXT_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/generate/text", {"params": LONG_ANSWER}),
    ("POST", "/generate/text", {"json": LONG_ANSWER}),
    ("POST", "/v1/chat/completions", {"json": LONG_CHAT}),
]


@pytest.mark.parametrize(("method", "path", "request_"), TEXT_ROUTES)
def test_a_plain_text_request_left_behind_is_cancelled(
    bridge: BridgeThread,
    tiny_server: ServerThread,
    http: httpx.Client,
    method: str,
    path: str,
    request_: dict[str, Any],
) -> None:
    engine = served_text_engine(tiny_server)
    before = settled_stats(engine)
    request_id = f"abandoned-{method}-{path.replace('/', '-')}"
    left = abandon(bridge, method, path, headers={"X-Request-ID": request_id}, **request_)
    assert engine.wait_idle(CANCEL_WITHIN_S + 5), "the model kept generating for nobody"
    cancelled_after = time.monotonic() - left
    after = engine.stats()
    assert after.cancelled == before.cancelled + 1
    assert after.tokens_generated - before.tokens_generated < 150, after  # of 300 asked
    row = assert_cancelled(tiny_server, request_id)
    assert row["completion_tokens"] is None or row["completion_tokens"] < 150
    assert cancelled_after < CANCEL_WITHIN_S, cancelled_after
    # counted as nginx counts a client that closed its request before the answer
    counted = f'genserve_bridge_requests_total{{code="499",method="{method}",route="{path}"}}'
    assert wait_until(lambda: counted in http.get("/metrics").text or None, timeout=10)
    # and the engine is free for the next caller
    started = time.monotonic()
    reply = http.get("/generate/text", params={"prompt": "Hi", "max_new_tokens": 2})
    assert reply.status_code == 200 and time.monotonic() - started < 10


def test_a_streamed_chat_left_behind_is_cancelled(
    bridge: BridgeThread, tiny_server: ServerThread
) -> None:
    body = {**LONG_CHAT, "stream": True}
    with (
        httpx.Client(base_url=bridge.url, timeout=60) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": "chat-walks"}
        ) as response,
    ):
        assert response.status_code == 200
        for count, _ in enumerate(response.iter_lines()):
            if count >= 6:
                break
    assert served_text_engine(tiny_server).wait_idle(CANCEL_WITHIN_S + 5)
    assert_cancelled(tiny_server, "chat-walks")


# Media requests made slow enough (steps, size, frames) to still be running when the
# client leaves after a second.
SLOW_IMAGE = {"prompt": "a room", "num_inference_steps": 50, "width": 128, "height": 128}
MEDIA_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/generate/image", {"params": SLOW_IMAGE}),  # the file, streamed
    (
        "GET",
        "/generate/image",
        {"params": SLOW_IMAGE, "headers": {"Accept": "text/event-stream"}},
    ),
    (
        "POST",
        "/v1/images/generations",  # assembled, then one JSON answer
        {"json": {"prompt": "a room", "size": "256x256"}},
    ),
    (
        "POST",
        "/generate/video",  # a multipart upload
        {
            "files": {"image": ("room.png", png_bytes(), "image/png")},
            "data": {"num_frames": "16", "num_inference_steps": "25"},
        },
    ),
]


@pytest.mark.parametrize(("method", "path", "request_"), MEDIA_ROUTES)
def test_a_media_request_left_behind_is_cancelled(
    bridge: BridgeThread,
    tiny_server: ServerThread,
    method: str,
    path: str,
    request_: dict[str, Any],
) -> None:
    request_id = f"abandoned-media-{method}-{path.replace('/', '-')}-{len(request_)}"
    request_ = {**request_, "headers": {"X-Request-ID": request_id, **request_.get("headers", {})}}
    left = abandon(bridge, method, path, **request_)
    row = assert_cancelled(tiny_server, request_id)
    # the server's call ended soon after the client left, not when the model was done
    assert row["response_time_ms"] / 1000 < GIVE_UP_AFTER_S + CANCEL_WITHIN_S, dict(row)
    assert time.monotonic() - left < CANCEL_WITHIN_S + 5


# -- 2. oversized bodies are refused before they are read ---------------------------------


def send_until_answered(conn: socket.socket, chunks: Iterator[bytes]) -> int:
    """Sends body chunks until the server starts answering (or hangs up); how many bytes
    went out."""
    sent = 0
    for chunk in chunks:
        if select.select([conn], [], [], 0)[0]:
            break
        try:
            conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def read_answer(conn: socket.socket) -> httpx.Response:
    """The server's answer on a raw connection, parsed by the standard library."""
    conn.settimeout(30)
    answer = HTTPResponse(conn)
    answer.begin()
    return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())


def assert_refused(response: httpx.Response, request_id: str) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["x-request-id"] == request_id
    assert response.json()["error"]["request_id"] == request_id


def test_a_declared_oversized_body_is_refused_unread(bridge: BridgeThread) -> None:
    head = (
        b"POST /generate/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: declared-64m\r\nContent-Length: %d\r\n\r\n" % (64 * MiB)
    )
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=30) as conn:
        conn.sendall(head)  # 64 MiB announced, not a byte of them sent
        assert_refused(read_answer(conn), "declared-64m")


def test_an_oversized_chunked_body_is_refused_while_it_is_read(bridge: BridgeThread) -> None:
    cap = body_caps(bridge.app.state.limits, UPLOAD_ROUTES).default
    piece = b" " * MiB
    head = (
        b"POST /generate/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: chunked-64m\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
            time.sleep(0.01)  # time for the answer to arrive between chunks

    with socket.create_connection(("127.0.0.1", bridge.port), timeout=30) as conn:
        conn.sendall(head)
        sent = send_until_answered(conn, chunks())
        response = read_answer(conn)
    assert_refused(response, "chunked-64m")
    assert response.headers["connection"] == "close"  # the rest is not worth reading
    # refused once past the cap, give or take what the sockets buffer
    assert sent < cap + 16 * MiB, (sent, cap)


def test_oversized_bodies_through_httpx(http: httpx.Client) -> None:
    big = b'{"prompt": "' + b"x" * (64 * MiB) + b'"}'
    response = http.post(
        "/generate/text",
        content=big,
        headers={"Content-Type": "application/json", "X-Request-ID": "big-json"},
    )
    assert_refused(response, "big-json")

    def generator() -> Iterator[bytes]:  # no length: sent chunked
        yield b'{"prompt": "'
        for _ in range(64):
            yield b"x" * MiB
        yield b'"}'

    response = http.post(
        "/v1/chat/completions",
        content=generator(),
        headers={"Content-Type": "application/json", "X-Request-ID": "big-chunked"},
    )
    assert_refused(response, "big-chunked")
    assert response.json()["error"]["type"] == "invalid_request_error"  # OpenAI's shape


UPLOAD_SPECS = [spec for spec in SPECS if spec.upload is not None]


@pytest.mark.parametrize("spec", UPLOAD_SPECS, ids=[spec.name for spec in UPLOAD_SPECS])
def test_an_upload_cap_leaves_room_for_the_largest_file(
    bridge: BridgeThread, http: httpx.Client, spec: ModalitySpec[Any, Any]
) -> None:
    assert spec.upload is not None
    limits = bridge.app.state.limits
    largest = limits.upload_bytes(spec)
    caps = body_caps(limits, UPLOAD_ROUTES)
    assert caps.for_path(spec.http_path) > largest
    assert caps.default < caps.for_path(spec.http_path)
    # twice the largest file the server takes is refused as a whole request
    twice = b"\0" * (2 * largest)
    response = http.post(
        spec.http_path,
        files={spec.upload.field: ("big.bin", twice, "application/octet-stream")},
        headers={"X-Request-ID": f"{spec.name}-too-big"},
    )
    assert_refused(response, f"{spec.name}-too-big")
    # the largest one gets through the bridge (it is no picture, no recording: a 422)
    served = http.get("/readyz").json()["modalities"][spec.name]
    assert served == "SERVING", f"the server does not serve {spec.name} ({served})"
    response = http.post(
        spec.http_path,
        files={spec.upload.field: ("big.bin", b"\0" * largest, "application/octet-stream")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith(f"{spec.upload.field}:")


def test_the_openai_transcription_route_takes_the_same_upload(bridge: BridgeThread) -> None:
    caps = body_caps(bridge.app.state.limits, UPLOAD_ROUTES)
    assert caps.for_path(TRANSCRIPTIONS_PATH) == caps.for_path(TRANSCRIPTION.http_path)


# -- 3. a 429 says when to retry -----------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    image_only = Manifest(image=load_manifest(manifest_path("tiny")).image)
    server = ServerThread(
        make_settings(tmp_path, media=MediaLimits(max_queue=1)), image_only
    ).start()
    bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{server.port}")).start()
    # the largest request the tiny profile admits (256 x 256 x 50 = max_cost): the waiting
    # one must still be waiting when the probe looks, on a fast machine too
    slow: dict[str, str | int] = {
        "prompt": "x",
        "num_inference_steps": 50,
        "width": 256,
        "height": 256,
    }

    def queued(client: httpx.Client) -> int:
        return int(client.get("/models").json()["models"][0]["queued"])

    try:
        with (
            httpx.Client(base_url=bridge.url, timeout=HTTP_TIMEOUT_S) as client,
            client.stream(
                "GET", "/generate/image", params=slow, headers={"Accept": "text/event-stream"}
            ) as running,
            socket.create_connection(("127.0.0.1", bridge.port)) as waiting,
        ):
            # one runs (its progress shows), one waits: the queue of one is full
            assert any(line.startswith("event: progress") for line in running.iter_lines())
            waiting.sendall(wire_bytes(bridge, "GET", "/generate/image", params=slow))
            assert wait_until(lambda: queued(client) == 1 or None, timeout=30)
            refused = [
                client.get("/generate/image", params=slow),
                client.post("/v1/images/generations", json={"prompt": "x", "size": "128x128"}),
            ]
            # leaving cancels both
        for response in refused:
            assert response.status_code == 429, response.text
            assert int(response.headers["retry-after"]) >= 1
        assert refused[0].json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert refused[1].json()["error"]["type"] == "rate_limit_error"  # OpenAI's shape
        # readiness lists the server's modalities, the ones without a model too
        ready = httpx.get(f"{bridge.url}/readyz").json()
        assert ready["modalities"]["image"] == "SERVING"
        assert ready["modalities"]["text"] == "NOT_SERVING (no model)"
    finally:
        bridge.stop()
        server.stop()


def test_a_model_still_loading_is_503_with_the_servers_retry_after(tmp_path: Path) -> None:
    text_only = Manifest(text=load_manifest(manifest_path("tiny")).text[:1])
    server = ServerThread(make_settings(tmp_path), text_only).start(load=False)  # pending
    bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{server.port}")).start()
    try:
        response = httpx.get(
            f"{bridge.url}/generate/text", params={"prompt": "hi"}, timeout=HTTP_TIMEOUT_S
        )
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"  # the server's, as it sent it
    finally:
        bridge.stop()
        server.stop()


# -- 4. readiness takes the services from the server ----------------------------------------


def test_readyz_takes_its_services_from_the_server(http: httpx.Client) -> None:
    body = http.get("/readyz").json()
    assert body["ready"] is True
    listed = http.get("/models").json()
    assert set(body["modalities"]) == set(listed["limits"])
    assert set(body["modalities"].values()) == {"SERVING"}
