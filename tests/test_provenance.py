"""Every generated file says where it came from: its generation record, read back here
with parsers that are not genserve's (Pillow's `text` and `getxmp`, PyAV's container
metadata, a RIFF walker written here, the OBJ/PLY header lines), against the final event
and the usage row; the prompt in no byte unless asked for; streamed files still stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import grpc
import numpy as np
import pytest
from PIL import Image

from genserve.client.cli import main as cli_main
from genserve.client.provenance import read_provenance
from genserve.contract.modalities.image import ImageParams
from genserve.server.manifest import ModelSpec
from genserve.server.modalities import engine_kind
from genserve.server.provenance.images import ImageFile
from genserve.server.provenance.mesh import obj_comment, ply_with_comment
from genserve.server.provenance.record import ModelStamp
from genserve.server.provenance.spec import ProvenanceSpec
from genserve.server.provenance.wav import info_chunk
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    mesh_pb2,
    mesh_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from tests.media_calls import MediaResult, collect, png_bytes
from tests.server_thread import ServerThread

# A prompt no file could hold by chance: searched for in every output byte.
SECRET = "Quillfeather zebra lantern"
TIMEOUT_S = 180


@dataclass
class Timed:
    """A media stream with each event's kind and arrival time."""

    result: MediaResult = field(default_factory=MediaResult)
    arrivals: list[tuple[str, float]] = field(default_factory=list)

    def first(self, kind: str) -> int:
        return next(i for i, (k, _) in enumerate(self.arrivals) if k == kind)

    def last(self, kind: str) -> int:
        return max(i for i, (k, _) in enumerate(self.arrivals) if k == kind)


def timed_collect(stream: Iterable[Any]) -> Timed:
    """collect(), with each event's arrival time taken as it comes off the stream."""
    timed = Timed()

    def stamped() -> Iterator[Any]:
        for event in stream:
            timed.arrivals.append((event.WhichOneof("event"), time.perf_counter()))
            yield event

    timed.result = collect(stamped())
    return timed


def call(channel: grpc.Channel, modality: str, request_id: str, **fields: Any) -> Timed:
    metadata = (("x-request-id", request_id),)
    if modality == "image":
        image = image_pb2.ImageGenerateRequest(
            **{"prompt": SECRET, "num_inference_steps": 2, **fields}
        )
        stream = image_pb2_grpc.ImageServiceStub(channel).Generate(
            image, metadata=metadata, timeout=TIMEOUT_S
        )
    elif modality == "audio":
        audio = audio_pb2.AudioGenerateRequest(**{"prompt": f"{SECRET}.", **fields})
        stream = audio_pb2_grpc.AudioServiceStub(channel).Generate(
            audio, metadata=metadata, timeout=TIMEOUT_S
        )
    elif modality == "video":
        video = video_pb2.VideoGenerateRequest(
            image=png_bytes(), num_frames=3, num_inference_steps=1, **fields
        )
        stream = video_pb2_grpc.VideoServiceStub(channel).Generate(
            video, metadata=metadata, timeout=TIMEOUT_S
        )
    else:
        mesh = mesh_pb2.MeshGenerateRequest(
            **{"prompt": SECRET, "num_inference_steps": 2, **fields}
        )
        stream = mesh_pb2_grpc.MeshServiceStub(channel).Generate(
            mesh, metadata=metadata, timeout=TIMEOUT_S
        )
    return timed_collect(stream)


# -- independent parsers ---------------------------------------------------------------


def riff_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """A RIFF file's top-level chunks; a streamed data chunk (size 0xFFFFFFFF) runs to
    the end."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        yield kind, data[at + 8 : at + 8 + size]
        at += 8 + size + (size & 1)


def wav_record(data: bytes) -> dict[str, Any]:
    kinds = []
    record = None
    for kind, body in riff_chunks(data):
        kinds.append(kind)
        if kind == b"LIST" and body[:4] == b"INFO":
            at = 4
            while at + 8 <= len(body):
                item, size = body[at : at + 4], struct.unpack_from("<I", body, at + 4)[0]
                if item == b"ICMT":
                    record = json.loads(body[at + 8 : at + 8 + size].rstrip(b"\0"))
                at += 8 + size + (size & 1)
    assert kinds.index(b"LIST") < kinds.index(b"data"), kinds  # before the samples
    assert record is not None
    return record


def png_record(data: bytes) -> dict[str, Any]:
    picture = Image.open(io.BytesIO(data))
    return json.loads(picture.text["genserve"])  # type: ignore[attr-defined]


def xmp_record(data: bytes) -> dict[str, Any]:
    description = Image.open(io.BytesIO(data)).getxmp()["xmpmeta"]["RDF"]["Description"]
    assert description["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")
    return json.loads(description["record"])


def mp4_record(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data), mode="r") as container:
        comment = container.metadata["comment"]
    first_fragment = data.find(b"moof")
    assert 0 < data.find(comment.encode()) < first_fragment  # in the init segment
    return json.loads(comment)


def obj_record(data: bytes) -> dict[str, Any]:
    first = data.split(b"\n", 1)[0].decode()
    assert first.startswith("# genserve ")
    return json.loads(first.removeprefix("# genserve "))


def ply_record(data: bytes) -> dict[str, Any]:
    header = data[: data.index(b"end_header\n")].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1].startswith("format ")
    comments = [line for line in header if line.startswith("comment genserve ")]
    assert len(comments) == 1
    return json.loads(comments[0].removeprefix("comment genserve "))


@dataclass(frozen=True)
class Case:
    modality: str
    fields: dict[str, Any]
    parse: Callable[[bytes], dict[str, Any]]
    model: str


JPEG, WEBP = image_pb2.IMAGE_FORMAT_JPEG, image_pb2.IMAGE_FORMAT_WEBP
CASES = {
    "png": Case("image", {}, png_record, "tiny-stable-diffusion"),
    "jpeg": Case("image", {"format": JPEG}, xmp_record, "tiny-stable-diffusion"),
    "webp": Case("image", {"format": WEBP}, xmp_record, "tiny-stable-diffusion"),
    "wav-bark": Case("audio", {"model": "tiny-bark"}, wav_record, "tiny-bark"),
    "wav-piper": Case("audio", {}, wav_record, "piper-joe-medium"),
    "mp4": Case("video", {}, mp4_record, "tiny-stable-video-diffusion"),
    "obj": Case("mesh", {}, obj_record, "tiny-shap-e"),
    "ply": Case("mesh", {"format": mesh_pb2.MESH_FORMAT_PLY}, ply_record, "tiny-shap-e"),
}


def engine_of(tiny_server: ServerThread, case: Case) -> str:
    entry = next(e for e in tiny_server.server.registry.entries() if e.name == case.model)
    return engine_kind(entry.modality, entry.spec)


@pytest.mark.parametrize("name", list(CASES))
def test_every_format_carries_its_record(
    tiny_server: ServerThread, channel: grpc.Channel, name: str
) -> None:
    case = CASES[name]
    request_id = f"provenance-{name}-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC)
    timed = call(channel, case.modality, request_id, **case.fields)
    result, final = timed.result, timed.result.final
    assert final is not None
    data = result.data
    # the final event's sha256 is the file's, record and all
    assert final.sha256 == hashlib.sha256(data).hexdigest() and final.total_bytes == len(data)
    record = case.parse(data)
    row = tiny_server.wait_for_usage_row(request_id)
    assert record["request_id"] == row["request_id"] == request_id
    assert record["model"] == row["model"] == case.model
    assert record["seed"] == final.seed
    assert record["ai_generated"] is True
    assert record["generator"] == "genserve" and record["genserve_version"]
    assert record["modality"] == case.modality
    assert record["engine"] == engine_of(tiny_server, case)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", record["weights_sha256"])
    created = datetime.fromisoformat(record["created"])
    assert before.replace(microsecond=0) <= created <= datetime.now(UTC)
    assert "parameters" in record and "seed" not in record["parameters"]
    # without include_prompt the prompt is in no byte of the file
    assert "prompt" not in record
    assert SECRET.encode() not in data and SECRET.lower().encode() not in data.lower()
    # genserve's own reader (the SDK's, `genserve inspect`) reads the same record
    assert read_provenance(data).record == record


def test_a_model_keeps_one_weights_digest(channel: grpc.Channel) -> None:
    """Computed once at load: two requests, one digest; another model, another digest."""
    first = png_record(call(channel, "image", f"digest-{uuid.uuid4().hex}").result.data)
    second = png_record(call(channel, "image", f"digest-{uuid.uuid4().hex}").result.data)
    mesh = obj_record(call(channel, "mesh", f"digest-{uuid.uuid4().hex}").result.data)
    assert first["weights_sha256"] == second["weights_sha256"] != mesh["weights_sha256"]
    assert first["request_id"] != second["request_id"]


@pytest.mark.parametrize("modality", ["image", "audio", "mesh"])
def test_a_request_may_put_its_prompt_in_the_record(channel: grpc.Channel, modality: str) -> None:
    timed = call(channel, modality, f"with-prompt-{uuid.uuid4().hex}", include_prompt=True)
    data = timed.result.data
    read = {"image": png_record, "audio": wav_record, "mesh": obj_record}[modality]
    record = read(data)
    assert SECRET in record["prompt"]  # audio's prompt is the sentence: SECRET + "."
    assert SECRET.encode() in data


def test_a_streamed_png_sends_its_record_before_the_model_runs(channel: grpc.Channel) -> None:
    timed = call(channel, "image", f"png-stream-{uuid.uuid4().hex}", num_inference_steps=4)
    first_chunk, first_step = timed.first("chunk"), timed.first("progress")
    assert first_chunk < first_step < timed.last("progress")  # sent before denoising began
    assert timed.arrivals[first_chunk][1] <= timed.arrivals[timed.last("progress")][1]
    head = timed.result.chunks[0].data
    assert head.startswith(b"\x89PNG") and b"iTXt" in head and b"IDAT" not in head
    assert read_provenance(head).record is not None  # the head alone carries the record


def test_a_streamed_wav_sends_its_record_before_it_has_finished_speaking(
    channel: grpc.Channel,
) -> None:
    prompt = "The weather is calm today. We will meet after lunch. Please bring your notes."
    timed = call(channel, "audio", f"wav-stream-{uuid.uuid4().hex}", prompt=prompt)
    assert len(timed.result.progress) == 3
    first_chunk = timed.first("chunk")
    assert first_chunk < timed.last("progress")  # before the last sentence was spoken
    assert timed.arrivals[first_chunk][1] <= timed.arrivals[timed.last("progress")][1]
    head = timed.result.chunks[0].data
    record = wav_record(head)  # the first chunk alone holds the record, then samples
    assert record["model"] == "piper-joe-medium" and prompt.encode() not in timed.result.data


# -- the record without a server ---------------------------------------------------------


def stamp(**provenance: Any) -> ModelStamp:
    return ModelStamp("image", "m", "diffusers", "sha256:" + "0" * 64, ProvenanceSpec(**provenance))


PARAMS = ImageParams(prompt=SECRET, negative_prompt="blurry", seed=7, width=64, height=64)


def test_the_manifest_turns_it_off_or_puts_the_prompt_in() -> None:
    base = {"name": "m", "source": "store:x"}
    assert ModelSpec(**base).provenance == ProvenanceSpec(record=True, include_prompt=False)
    assert ModelSpec(**base, provenance="off").provenance.record is False
    with_prompt = ModelSpec(**base, provenance={"include_prompt": True}).provenance
    assert with_prompt.include_prompt
    with pytest.raises(ValueError, match="provenance"):
        ModelSpec(**base, provenance="maybe")
    assert stamp(record=False).record_for(PARAMS, "r", 0.0) is None
    record = stamp(include_prompt=True).record_for(PARAMS, "r", 0.0)
    assert record is not None
    assert record.fields["prompt"] == SECRET and record.fields["negative_prompt"] == "blurry"


def test_off_leaves_every_format_as_it_was() -> None:
    picture = Image.new("RGB", (64, 64), (10, 20, 30))
    for pillow_format in ("PNG", "JPEG", "WEBP"):
        file = ImageFile(pillow_format, 64, 64, None)
        data = file.head() + file.rest(picture)
        assert read_provenance(data).record is None
        plain = io.BytesIO()
        picture.save(plain, format=pillow_format)
        assert data == plain.getvalue()
    assert info_chunk(None) == b"" and obj_comment(None) == b""
    assert ply_with_comment(b"ply\nformat ascii 1.0\n", None) == b"ply\nformat ascii 1.0\n"


def test_bytes_added_per_format() -> None:
    """The record's cost in each format (printed for the README)."""
    record = stamp().record_for(PARAMS, uuid.uuid4().hex, time.time())
    assert record is not None
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    added = {}
    for pillow_format in ("PNG", "JPEG", "WEBP"):
        with_record, without = (
            ImageFile(pillow_format, 64, 64, record),
            ImageFile(pillow_format, 64, 64, None),
        )
        size = len(with_record.head() + with_record.rest(picture))
        added[pillow_format] = size - len(without.head() + without.rest(picture))
    added["WAV"] = len(info_chunk(record))
    added["OBJ"] = len(obj_comment(record))
    added["PLY"] = len(ply_with_comment(b"ply\nformat ascii 1.0\n", record)) - 21
    print(f"record JSON {len(record.json)} bytes; added per format: {added}")
    assert all(len(record.json) <= n <= len(record.json) + 1200 for n in added.values())


def test_genserve_inspect_prints_the_record(
    channel: grpc.Channel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = f"inspect-{uuid.uuid4().hex}"
    path = tmp_path / "mesh.ply"
    path.write_bytes(call(channel, "mesh", request_id, format=mesh_pb2.MESH_FORMAT_PLY).result.data)
    assert cli_main(["--json", "inspect", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format"] == "ply" and shown["record"]["request_id"] == request_id
    assert cli_main(["inspect", str(path)]) == 0
    assert request_id in capsys.readouterr().out
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes())
    assert cli_main(["inspect", str(plain)]) == 1
