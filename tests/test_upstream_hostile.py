"""An upstream is not trusted: an edge genserve (its own process, so its memory is its
own) in front of a loopback server that misbehaves on purpose (hostile_upstream.py).

Each case: the caller gets a clear status, the edge's peak RSS stays within +100 MB of
what it was before the cases, its usage row is written, and a good request right after
succeeds. At the end, the edge's log holds no traceback."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import soundfile
import tomli_w
from PIL import Image

from bench.server_process import free_port, wait_serving
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
from tests.hostile_upstream import GOOD_TEXT, SPEECH_RATE, HostileUpstream
from tests.media_calls import collect

pytestmark = pytest.mark.timeout(600)

MiB = 1024 * 1024
RSS_ALLOWANCE = 100 * MiB
MAX_TOKENS = 16


def _model(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "upstream",
        "default": True,
        "upstream": {"kind": "openai", "base_url": url, "model": "m", "retries": {"attempts": 1}},
    }


@dataclass
class Edge:
    process: subprocess.Popen[bytes]
    channel: grpc.Channel
    data_dir: Path
    log: Path
    baseline_peak: int = 0

    def peak_rss(self) -> int:
        """VmHWM: the most this process has ever held resident."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def usage_row(self, request_id: str, timeout_s: float = 15) -> sqlite3.Row:
        deadline = time.monotonic() + timeout_s
        while True:
            with sqlite3.connect(self.data_dir / "usage.sqlite3") as db:
                db.row_factory = sqlite3.Row
                row = db.execute(
                    "SELECT * FROM usage WHERE request_id = ?", (request_id,)
                ).fetchone()
            if row is not None or time.monotonic() > deadline:
                assert row is not None, f"no usage row for {request_id}"
                return row
            time.sleep(0.2)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("hostile-edge")
    with HostileUpstream() as upstream:
        modalities = ("text", "image", "audio", "embedding")
        manifest = {m: [_model(f"hostile-{m}", upstream.url)] for m in modalities}
        (folder / "edge.toml").write_text(tomli_w.dumps(manifest))
        port = free_port()
        command = [sys.executable, "-m", "genserve.server", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--metrics-port", "0", "--data-dir", str(folder)]
        command += ["--manifest", str(folder / "edge.toml")]
        log = folder / "edge.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            target = f"127.0.0.1:{port}"
            wait_serving(target, process)
            with grpc.insecure_channel(target) as channel:
                served = Edge(process, channel, folder, log)
                for call in GOOD_CALLS.values():  # warm every path before the baseline
                    call(served, request_id("good"))
                served.baseline_peak = served.peak_rss()
                yield served
        finally:
            process.terminate()
            process.wait(timeout=60)


def request_id(case: str) -> str:
    return f"{case}-{uuid.uuid4().hex}"


# -- the calls ----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    value: Any = None


def _text(edge: Edge, rid: str, **fields: Any) -> Outcome:
    stub = text_pb2_grpc.TextServiceStub(edge.channel)
    request = text_pb2.TextGenerateRequest(prompt="Say hello.", max_new_tokens=MAX_TOKENS)
    deltas: list[str] = []
    try:
        for response in stub.Generate(request, metadata=(("x-request-id", rid),), timeout=60):
            if response.HasField("delta"):
                deltas.append(response.delta.text)
            else:
                return Outcome(grpc.StatusCode.OK, "", (deltas, response.final))
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")
    raise AssertionError("the stream ended without a final")


def _media(generate: Any, request: Any, rid: str) -> Outcome:
    try:
        result = collect(generate(request, metadata=(("x-request-id", rid),), timeout=60))
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")
    return Outcome(grpc.StatusCode.OK, "", result)


def _image(edge: Edge, rid: str, image_format: int = image_pb2.IMAGE_FORMAT_PNG) -> Outcome:
    request = image_pb2.ImageGenerateRequest(
        prompt="a cube", width=64, height=64, format=image_format
    )
    return _media(image_pb2_grpc.ImageServiceStub(edge.channel).Generate, request, rid)


def _speech(edge: Edge, rid: str) -> Outcome:
    request = audio_pb2.AudioGenerateRequest(prompt="hello")
    return _media(audio_pb2_grpc.AudioServiceStub(edge.channel).Generate, request, rid)


def _embed(edge: Edge, rid: str) -> Outcome:
    stub = embedding_pb2_grpc.EmbeddingServiceStub(edge.channel)
    try:
        reply = stub.Embed(
            embedding_pb2.EmbedRequest(texts=["hello world"]),
            metadata=(("x-request-id", rid),),
            timeout=60,
        )
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")
    return Outcome(grpc.StatusCode.OK, "", reply)


def _good_text(edge: Edge, rid: str) -> None:
    outcome = _text(edge, rid)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    deltas, final = outcome.value
    assert "".join(deltas) == "".join(GOOD_TEXT)
    assert final.usage.prompt_tokens == 9 and final.usage.completion_tokens == len(GOOD_TEXT)


def _good_image(edge: Edge, rid: str) -> None:
    outcome = _image(edge, rid)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    with Image.open(io.BytesIO(outcome.value.data)) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))


def _good_speech(edge: Edge, rid: str) -> None:
    outcome = _speech(edge, rid)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    samples, rate = soundfile.read(io.BytesIO(outcome.value.data))
    assert rate == SPEECH_RATE and len(samples) == SPEECH_RATE


def _good_embedding(edge: Edge, rid: str) -> None:
    outcome = _embed(edge, rid)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    assert list(outcome.value.embeddings[0].values) == pytest.approx([0.1, 0.2, 0.3])


GOOD_CALLS = {
    "text": _good_text,
    "image": _good_image,
    "audio": _good_speech,
    "embedding": _good_embedding,
}


# -- the cases ----------------------------------------------------------------------------

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Case:
    name: str  # the hostile upstream's behaviour (hostile_upstream.py)
    modality: str
    code: grpc.StatusCode
    says: str = ""  # in the status details
    image_format: int = image_pb2.IMAGE_FORMAT_PNG


CASES = [
    Case("flood", "text", OK),  # 200,000 deltas, max_tokens ignored: cut at ours
    Case("endless", "text", UNAVAILABLE, "max_event_bytes"),  # a 256 MiB line, no line end
    Case("negative", "text", OK),  # usage prompt_tokens = -5
    Case("huge", "text", OK),  # usage of 10**30 tokens
    Case("words", "text", OK),  # usage that is not numbers
    Case("badutf8", "text", UNAVAILABLE, "not UTF-8"),
    Case("surrogate", "text", UNAVAILABLE, "not UTF-8"),  # a lone \ud800 escape
    Case("shapes", "text", UNAVAILABLE, "unexpected"),  # choices = 5
    Case("number", "text", UNAVAILABLE, "unexpected"),  # a delta's content = 5
    Case("text", "image", UNAVAILABLE, "no valid PNG"),  # b64_json holding words
    Case("random", "image", UNAVAILABLE, "bytes"),  # 200 MB of random bytes
    Case("bomb", "image", UNAVAILABLE, "no valid PNG"),  # 30,000 x 30,000
    Case("bomb", "image", UNAVAILABLE, "no valid PNG", image_pb2.IMAGE_FORMAT_JPEG),
    Case("wrongsize", "image", UNAVAILABLE, "96x96"),
    Case("truncated", "image", UNAVAILABLE, "no valid PNG"),
    Case("lying", "audio", UNAVAILABLE, "declares"),  # 10 s declared, 1 s sent
    Case("noise", "audio", UNAVAILABLE, "no valid WAV"),
    Case("number", "embedding", UNAVAILABLE, "malformed"),  # a 400-digit number
    Case("negative", "embedding", OK),
]


def _run(edge: Edge, case: Case, rid: str) -> Outcome:
    if case.modality == "text":
        return _text(edge, rid)
    if case.modality == "image":
        return _image(edge, rid, case.image_format)
    if case.modality == "audio":
        return _speech(edge, rid)
    return _embed(edge, rid)


def _check_ok(case: Case, outcome: Outcome) -> None:
    """What an OK answer to a hostile reply must be."""
    if case.modality == "embedding":  # the upstream's -5 is dropped for our estimate
        assert outcome.value.prompt_tokens > 0
        return
    deltas, final = outcome.value
    if case.name == "flood":
        assert len(deltas) == MAX_TOKENS and "".join(deltas) == "x" * MAX_TOKENS
        assert final.finish_reason == text_pb2.FINISH_REASON_LENGTH
        assert final.usage.completion_tokens == MAX_TOKENS
        return
    # A usage that makes no sense is replaced by our own count.
    assert "".join(deltas) == "".join(GOOD_TEXT)
    assert final.usage.completion_tokens == len(GOOD_TEXT)
    assert 0 < final.usage.prompt_tokens < 1000


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[
        f"{c.modality}-{c.name}"
        + (
            f"-as-{image_pb2.ImageFormat.Name(c.image_format)[13:]}"
            if c.modality == "image"
            else ""
        )
        for c in CASES
    ],
)
def test_a_hostile_reply_gets_a_clear_status_and_the_edge_keeps_serving(
    edge: Edge, case: Case
) -> None:
    rid = request_id(case.name)
    outcome = _run(edge, case, rid)
    assert outcome.code == case.code, outcome.details
    assert case.says in outcome.details
    if case.code == OK:
        _check_ok(case, outcome)
    row = edge.usage_row(rid)
    assert row["status_code"] == case.code.name
    grown = edge.peak_rss() - edge.baseline_peak
    assert grown <= RSS_ALLOWANCE, f"the edge's peak RSS grew {grown / MiB:.0f} MB"
    GOOD_CALLS[case.modality](edge, request_id("good"))  # and the next request is served


def test_the_edges_log_has_no_traceback_and_names_bad_usage(edge: Edge) -> None:
    for case in ("negative", "huge", "words"):
        assert _text(edge, request_id(case)).code == OK
    log = edge.log.read_text()
    assert "Traceback" not in log
    warned = [line for line in log.splitlines() if "usage numbers that make no sense" in line]
    assert len([line for line in warned if "hostile-text" in line]) == 1, warned  # once a model
