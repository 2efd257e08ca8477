"""A bounded load test with a shutdown in the middle of it.

16 clients mix every modality with cancels, short deadlines, bad inputs and unknown
models against a real `python -m genserve.server` process; then SIGTERM. Every request
the server saw is accounted for: exactly one usage row per request ID, with the status
the client saw, and no stream that ended OK is truncated. The process exits within the
grace period plus 2 s, and its memory stays within a stated bound of where it started.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    mesh_pb2,
    mesh_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from tests.media_calls import png_bytes
from tests.server_thread import MODEL_STORE

CLIENTS = 16
LOAD_S = 20.0
GRACE_S = 2.0
EXIT_BOUND_S = GRACE_S + 2.0
RSS_BOUND = 600 * 1024 * 1024  # allocator caches of 6 models under load, not a leak
START_TIMEOUT_S = 180


@dataclass
class Outcome:
    request_id: str
    kind: str
    code: grpc.StatusCode
    reached_server: bool  # the server echoed our request ID: it must have a row
    complete: bool = True  # an OK stream ended with its final event, sha256 right


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_serving(channel: grpc.Channel, process: subprocess.Popen[bytes]) -> None:
    grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited while starting"
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)  # models loading: the status flips once, at the end
    raise TimeoutError("the server did not report SERVING")


class Caller:
    """One client: picks a request at random, runs it, records what it saw."""

    def __init__(self, channel: grpc.Channel, index: int, outcomes: list[Outcome]) -> None:
        self._channel = channel
        self._random = random.Random(index)
        self._index = index
        self._count = 0
        self._outcomes = outcomes
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        kinds = list(self._calls())
        while not stop.is_set():
            kind = self._random.choice(kinds)
            self._count += 1
            request_id = f"load-{self._index}-{self._count}-{kind}"
            outcome = self._calls()[kind](request_id)
            with self._lock:
                self._outcomes.append(outcome)

    def _calls(self) -> dict[str, Callable[[str], Outcome]]:
        text = text_pb2_grpc.TextServiceStub(self._channel)
        image = image_pb2_grpc.ImageServiceStub(self._channel)
        audio = audio_pb2_grpc.AudioServiceStub(self._channel)
        video = video_pb2_grpc.VideoServiceStub(self._channel)
        mesh = mesh_pb2_grpc.MeshServiceStub(self._channel)
        embed = embedding_pb2_grpc.EmbeddingServiceStub(self._channel)
        greedy = {"do_sample": False}
        return {
            "text": lambda rid: self._stream(
                rid,
                "text",
                text.Generate,
                text_pb2.TextGenerateRequest(prompt="Hi", max_new_tokens=24, **greedy),
            ),
            "text-cancel": lambda rid: self._stream(
                rid,
                "text-cancel",
                text.Generate,
                text_pb2.TextGenerateRequest(prompt="Tell a story", max_new_tokens=200),
                cancel_after=3,
            ),
            "text-deadline": lambda rid: self._stream(
                rid,
                "text-deadline",
                text.Generate,
                text_pb2.TextGenerateRequest(prompt="Tell a story", max_new_tokens=400),
                timeout=0.8,
            ),
            "text-bad": lambda rid: self._stream(
                rid, "text-bad", text.Generate, text_pb2.TextGenerateRequest(prompt=" ")
            ),
            "text-unknown-model": lambda rid: self._stream(
                rid,
                "text-unknown-model",
                text.Generate,
                text_pb2.TextGenerateRequest(prompt="Hi", model="nope"),
            ),
            "image": lambda rid: self._stream(
                rid,
                "image",
                image.Generate,
                image_pb2.ImageGenerateRequest(prompt="a", num_inference_steps=2),
            ),
            "image-cancel": lambda rid: self._stream(
                rid,
                "image-cancel",
                image.Generate,
                image_pb2.ImageGenerateRequest(prompt="a", num_inference_steps=20),
                cancel_after=2,
            ),
            "image-too-big": lambda rid: self._stream(
                rid,
                "image-too-big",
                image.Generate,
                image_pb2.ImageGenerateRequest(prompt="a", width=1024, height=1024),
            ),
            "audio": lambda rid: self._stream(
                rid, "audio", audio.Generate, audio_pb2.AudioGenerateRequest(prompt="hello")
            ),
            "video": lambda rid: self._stream(
                rid,
                "video",
                video.Generate,
                video_pb2.VideoGenerateRequest(
                    image=png_bytes(), num_frames=2, num_inference_steps=1
                ),
            ),
            "mesh": lambda rid: self._stream(
                rid,
                "mesh",
                mesh.Generate,
                mesh_pb2.MeshGenerateRequest(prompt="a cup", num_inference_steps=2),
            ),
            "embed": lambda rid: self._unary(
                rid, "embed", embed.Embed, embedding_pb2.EmbedRequest(texts=["a", "b"])
            ),
        }

    def _stream(
        self,
        request_id: str,
        kind: str,
        method: Callable[..., object],
        request: object,
        *,
        cancel_after: int | None = None,
        timeout: float = 60,
    ) -> Outcome:
        call = method(request, metadata=(("x-request-id", request_id),), timeout=timeout)
        events: list[object] = []
        try:
            for event in call:  # type: ignore[attr-defined]
                events.append(event)
                if cancel_after is not None and len(events) >= cancel_after:
                    call.cancel()  # type: ignore[attr-defined]
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
        echoed = _echoed(call, request_id)
        complete = code is not grpc.StatusCode.OK or _complete(kind, events)
        return Outcome(request_id, kind, code, echoed, complete)

    def _unary(
        self, request_id: str, kind: str, method: Callable[..., object], request: object
    ) -> Outcome:
        future = method.future(  # type: ignore[attr-defined]
            request, metadata=(("x-request-id", request_id),), timeout=60
        )
        try:
            future.result()
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
        return Outcome(request_id, kind, code, _echoed(future, request_id))


def _echoed(call: object, request_id: str) -> bool:
    try:
        metadata = call.initial_metadata() or ()  # type: ignore[attr-defined]
    except grpc.RpcError:
        return False
    return dict(metadata).get("x-request-id") == request_id


def _complete(kind: str, events: Iterable[object]) -> bool:
    listed = list(events)
    if not listed:
        return False
    last = listed[-1]
    if kind.startswith("text"):
        return last.HasField("final")  # type: ignore[attr-defined]
    if not last.HasField("final"):  # type: ignore[attr-defined]
        return False
    data = b"".join(e.chunk.data for e in listed if e.HasField("chunk"))  # type: ignore[attr-defined]
    return hashlib.sha256(data).hexdigest() == last.final.sha256  # type: ignore[attr-defined]


@pytest.mark.timeout(600)
def test_sigterm_under_mixed_load_accounts_for_every_request(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "genserve.server", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--data-dir", str(tmp_path), "--model-store", str(MODEL_STORE),
        "--shutdown-grace-s", str(GRACE_S), "--log-level", "WARNING",
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 32 << 20)]
        )
        wait_serving(channel, process)
        rss_start = rss_of(process.pid)
        outcomes: list[Outcome] = []
        stop = threading.Event()
        callers = [Caller(channel, i, outcomes) for i in range(CLIENTS)]
        threads = [threading.Thread(target=c.run, args=(stop,)) for c in callers]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_S)
        rss_end = rss_of(process.pid)
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=EXIT_BOUND_S + 30)
        exit_s = time.monotonic() - sigterm_at
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log_text = log_path.read_text(errors="replace")
    print(  # the figures for the record (pytest -s)
        f"requests {len(outcomes)}, exit {exit_s:.2f} s after SIGTERM, "
        f"RSS {rss_start >> 20} -> {rss_end >> 20} MB, "
        f"codes {sorted({o.code.name for o in outcomes})}"
    )
    assert process.returncode == 0, log_text[-3000:]
    assert exit_s <= EXIT_BOUND_S, f"exit took {exit_s:.1f} s"
    assert rss_end - rss_start < RSS_BOUND, f"RSS grew {(rss_end - rss_start) >> 20} MB"
    assert "Traceback" not in log_text, log_text[-3000:]

    with sqlite3.connect(tmp_path / "usage.sqlite3") as db:
        rows = db.execute("SELECT request_id, status_code FROM usage").fetchall()
    by_id: dict[str, list[str]] = {}
    for request_id, status in rows:
        by_id.setdefault(request_id, []).append(status)
    seen = [o for o in outcomes if o.reached_server]
    assert len(seen) > 50, f"only {len(seen)} requests reached the server"
    wrong = [
        (o.request_id, o.code.name, by_id.get(o.request_id))
        for o in seen
        if by_id.get(o.request_id) != [o.code.name]
    ]
    assert not wrong, wrong[:20]
    load_ids = {o.request_id for o in outcomes}
    strays = [rid for rid in by_id if rid.startswith("load-") and rid not in load_ids]
    assert not strays
    truncated = [o.request_id for o in outcomes if not o.complete]
    assert not truncated, truncated
    codes = {o.code for o in seen}
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes
    assert grpc.StatusCode.CANCELLED in codes and grpc.StatusCode.NOT_FOUND in codes
