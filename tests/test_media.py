"""Media modalities end to end: real tiny pipelines, real stubs, files parsed back."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import av
import grpc
import numpy as np
import open3d
import pytest
import soundfile
from PIL import Image

from genserve.server.manifest import Modality
from genserve.server.media.mesh_files import obj_blocks
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
from tests.media_calls import TEST_CHUNK_SIZE, MediaResult, collect, png_bytes
from tests.server_thread import ServerThread, settled_stats

WORKER_IDLE_TIMEOUT_S = 60


def image(channel: grpc.Channel, **fields: object) -> MediaResult:
    request = image_pb2.ImageGenerateRequest(**{"prompt": "a cozy living room", **fields})  # type: ignore[arg-type]
    return collect(image_pb2_grpc.ImageServiceStub(channel).Generate(request, timeout=120))


# Bark by name: its seeded, whole-file WAV at 24 kHz (the profile's default speech model
# is piper's real voice, tested in test_speech_piper.py).
BARK = "tiny-bark"


def audio(channel: grpc.Channel, **fields: object) -> MediaResult:
    request = audio_pb2.AudioGenerateRequest(  # type: ignore[arg-type]
        **{"prompt": "Hello, FastAPI!", "model": BARK, **fields}
    )
    return collect(audio_pb2_grpc.AudioServiceStub(channel).Generate(request, timeout=120))


def video(channel: grpc.Channel, **fields: object) -> MediaResult:
    request = video_pb2.VideoGenerateRequest(**{"image": png_bytes(), **fields})  # type: ignore[arg-type]
    return collect(video_pb2_grpc.VideoServiceStub(channel).Generate(request, timeout=120))


def mesh(channel: grpc.Channel, **fields: object) -> MediaResult:
    request = mesh_pb2.MeshGenerateRequest(
        **{"prompt": "a chair", "num_inference_steps": 4, **fields}
    )  # type: ignore[arg-type]
    return collect(mesh_pb2_grpc.MeshServiceStub(channel).Generate(request, timeout=120))


def assert_well_formed(result: MediaResult) -> None:
    """The exact order common.proto promises (one header, then progress, then chunks, then
    one final; a PNG's head, with its generation record, may leave before the progress),
    chunks bounded and contiguous, sha256 right."""
    kinds = result.kinds
    head = ["chunk"] if kinds[1:2] == ["chunk"] and "progress" in kinds else []
    order = ["header"] + head + ["progress"] * kinds.count("progress")
    order += ["chunk"] * (kinds.count("chunk") - len(head)) + ["final"]
    assert kinds == order, kinds
    assert kinds.count("chunk") >= 1
    assert result.final is not None
    assert all(len(c.data) <= TEST_CHUNK_SIZE for c in result.chunks)
    offsets = [c.offset for c in result.chunks]
    assert offsets == [sum(len(c.data) for c in result.chunks[:i]) for i in range(len(offsets))]
    assert result.final.total_bytes == len(result.data)
    assert result.final.sha256 == result.sha256
    timings = result.final.timings
    assert timings.inference_ms > 0 and timings.encoding_ms >= 0 and timings.queued_ms >= 0


def assert_progress_complete(result: MediaResult, total: int | None = None) -> None:
    """Steps 1..n in order, each saying n; n is the request's steps where the scheduler
    takes one model call per step (Heun, in Shap-E, takes two)."""
    assert result.progress
    n = result.progress[0].total_steps
    assert [p.step for p in result.progress] == list(range(1, n + 1))
    assert all(p.total_steps == n for p in result.progress)
    if total is not None:
        assert n == total


# -- image ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "pillow_format", "mime"),
    [
        (image_pb2.IMAGE_FORMAT_UNSPECIFIED, "PNG", "image/png"),
        (image_pb2.IMAGE_FORMAT_JPEG, "JPEG", "image/jpeg"),
        (image_pb2.IMAGE_FORMAT_WEBP, "WEBP", "image/webp"),
    ],
)
def test_image_parses_back_at_the_asked_size(
    channel: grpc.Channel, image_format: int, pillow_format: str, mime: str
) -> None:
    result = image(channel, width=96, height=64, num_inference_steps=3, seed=7, format=image_format)
    assert_well_formed(result)
    assert result.kinds[0] == "header"  # the size is known before the model runs
    assert result.header is not None
    assert result.header.mime_type == mime
    assert (result.header.width, result.header.height) == (96, 64)
    assert result.header.file_name.startswith("image-7.")
    assert_progress_complete(result, 3)
    picture = Image.open(io.BytesIO(result.data))
    assert picture.format == pillow_format and picture.size == (96, 64)
    assert result.final is not None and result.final.seed == 7


def test_image_defaults_are_the_seeds(channel: grpc.Channel) -> None:
    result = image(channel)
    assert_progress_complete(result, 10)  # num_inference_steps defaults to 10, as in the seed
    assert len(result.chunks) > 1
    assert result.final is not None and result.final.seed != 0


def pixels(result: MediaResult) -> bytes:
    return Image.open(io.BytesIO(result.data)).tobytes()


def test_same_seed_same_pixels(channel: grpc.Channel) -> None:
    """The same image; the files differ only in their generation records (request id
    and time: test_provenance.py)."""
    first = image(channel, num_inference_steps=2, seed=123)
    second = image(channel, num_inference_steps=2, seed=123)
    other = image(channel, num_inference_steps=2, seed=124)
    assert pixels(first) == pixels(second)
    assert pixels(first) != pixels(other)


def test_cancelling_mid_denoise_stops_the_pipeline(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    engine = tiny_server.server.registry.resolve(Modality.IMAGE, None).engine
    assert engine is not None  # in process or a worker's: its stats cross the boundary
    cancelled_before = settled_stats(engine).cancelled
    request = image_pb2.ImageGenerateRequest(
        prompt="a long one", num_inference_steps=100, width=128, height=128
    )
    call = image_pb2_grpc.ImageServiceStub(channel).Generate(
        request, metadata=(("x-request-id", "image-cancel"),)
    )
    for event in call:
        if event.HasField("progress") and event.progress.step >= 2:
            call.cancel()
            break
    assert engine.wait_idle(WORKER_IDLE_TIMEOUT_S), "the pipeline kept running"
    assert engine.stats().cancelled == cancelled_before + 1
    assert tiny_server.wait_for_usage_row("image-cancel")["status_code"] == "CANCELLED"
    # and the pipeline is free again
    assert image(channel, num_inference_steps=1).final is not None


# -- audio ------------------------------------------------------------------------------


def test_audio_is_a_wav_at_the_headers_rate(channel: grpc.Channel) -> None:
    result = audio(channel, preset="v2/en_speaker_9", seed=3)
    assert_well_formed(result)
    assert result.header is not None and result.header.mime_type == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(result.data))
    assert rate == result.header.sample_rate == 24_000
    assert len(samples) > 0
    assert abs(len(samples) / rate - result.header.duration_s) < 1e-3
    assert np.isfinite(samples).all()


def test_audio_same_seed_same_samples(channel: grpc.Channel) -> None:
    first, second = (soundfile.read(io.BytesIO(audio(channel, seed=5).data)) for _ in "ab")
    assert first[1] == second[1]
    np.testing.assert_array_equal(first[0], second[0])


# -- video ------------------------------------------------------------------------------


def test_video_is_an_mp4_with_the_asked_frames(channel: grpc.Channel) -> None:
    result = video(channel, num_frames=10, fps=5.0, num_inference_steps=2)
    assert_well_formed(result)
    assert result.kinds[0] == "header"
    header = result.header
    assert header is not None and header.mime_type == "video/mp4"
    assert (header.num_frames, header.fps, header.width, header.height) == (10, 5.0, 64, 64)
    assert_progress_complete(result, 2)
    assert result.final is not None and result.final.seed == 42  # the seed's default
    with av.open(io.BytesIO(result.data), mode="r") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert len(frames) == 10
    assert frames[0].format.name == "yuv420p"
    assert (frames[0].width, frames[0].height) == (64, 64)


def test_video_plays_from_its_first_chunks(channel: grpc.Channel) -> None:
    """Fragmented MP4: a player holding only the first chunks can already decode frames."""
    result = video(channel, num_frames=14, fps=2.0, num_inference_steps=1, width=128, height=128)
    assert len(result.chunks) >= 3
    prefix = b"".join(c.data for c in result.chunks[: len(result.chunks) * 2 // 3])
    decoded = 0
    with av.open(io.BytesIO(prefix), mode="r") as container:
        try:
            for _ in container.decode(video=0):
                decoded += 1
        except av.error.InvalidDataError:
            pass  # the cut-off fragment at the end
    assert 0 < decoded < 14


def frames(result: MediaResult) -> list[np.ndarray]:
    with av.open(io.BytesIO(result.data), mode="r") as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


def test_video_same_seed_same_frames(channel: grpc.Channel) -> None:
    first = frames(video(channel, num_frames=3, num_inference_steps=1, seed=9))
    second = frames(video(channel, num_frames=3, num_inference_steps=1, seed=9))
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


# -- mesh -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mesh_format", "suffix", "mime"),
    [
        (mesh_pb2.MESH_FORMAT_UNSPECIFIED, "obj", "model/obj"),
        (mesh_pb2.MESH_FORMAT_PLY, "ply", "model/ply"),
    ],
)
def test_mesh_opens_in_open3d_with_the_headers_counts(
    channel: grpc.Channel, mesh_format: int, suffix: str, mime: str
) -> None:
    result = mesh(channel, format=mesh_format, seed=11)
    assert_well_formed(result)
    header = result.header
    assert header is not None and header.mime_type == mime
    assert header.file_name == f"mesh-11.{suffix}"
    assert_progress_complete(result)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mesh.{suffix}"
        path.write_bytes(result.data)
        loaded = open3d.io.read_triangle_mesh(path)
    # The counts are known only after decoding: they come in the final event.
    final = result.final
    assert final is not None
    assert len(loaded.triangles) == final.face_count > 0
    # OBJ readers may merge duplicate positions; PLY keeps every vertex
    assert 0 < len(loaded.vertices) <= final.vertex_count
    if suffix == "ply":
        assert len(loaded.vertices) == final.vertex_count
    assert loaded.has_vertex_colors()


def test_obj_writer_round_trips_through_open3d(tmp_path: Path) -> None:
    """Our OBJ text, cut in small blocks, reads back in open3d as the arrays we wrote."""
    sphere = open3d.geometry.TriangleMesh.create_sphere(radius=0.5, resolution=12)
    vertices = np.asarray(sphere.vertices)
    faces = np.asarray(sphere.triangles)
    colours = np.random.default_rng(0).random(vertices.shape)
    blocks = list(obj_blocks(vertices, colours, faces, rows=7))
    assert len(blocks) > 2 and max(map(len, blocks)) < 7 * 80
    path = tmp_path / "sphere.obj"
    path.write_bytes(b"".join(blocks))
    loaded = open3d.io.read_triangle_mesh(path)
    # open3d renumbers vertices as it reads; compare each triangle's corners instead
    corners = np.asarray(loaded.triangles)
    assert corners.shape == faces.shape
    np.testing.assert_allclose(np.asarray(loaded.vertices)[corners], vertices[faces], atol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded.vertex_colors)[corners], colours[faces], atol=1e-4)


def test_mesh_file_name_never_carries_the_prompt(channel: grpc.Channel) -> None:
    result = mesh(channel, prompt='../../etc/passwd"\r\nX-Evil: 1', num_inference_steps=1)
    assert result.header is not None
    name = result.header.file_name
    assert "/" not in name and "\r" not in name and "passwd" not in name


# -- bad input --------------------------------------------------------------------------

BAD_MEDIA_REQUESTS = [
    ("image", {"prompt": ""}, "prompt"),
    ("image", {"num_inference_steps": 0}, "num_inference_steps"),
    ("image", {"num_inference_steps": 1000}, "num_inference_steps"),
    ("image", {"width": 100}, "width"),
    ("image", {"width": 4096, "height": 4096}, "width"),
    ("image", {"guidance_scale": -1.0}, "guidance_scale"),
    ("image", {"guidance_scale": float("nan")}, "guidance_scale"),
    ("audio", {"prompt": "  "}, "prompt"),
    ("audio", {"preset": "v2/xx_speaker_99"}, "preset"),
    ("audio", {"prompt": "x" * 600}, "prompt"),
    ("video", {"image": b""}, "image"),
    ("video", {"image": b"definitely not an image"}, "image"),
    ("video", {"num_frames": 0}, "num_frames"),
    ("video", {"num_frames": 500}, "num_frames"),
    ("video", {"fps": 0.0}, "fps"),
    ("video", {"noise_aug_strength": 2.0}, "noise_aug_strength"),
    ("mesh", {"prompt": ""}, "prompt"),
    ("mesh", {"num_inference_steps": 0}, "num_inference_steps"),
    ("mesh", {"guidance_scale": 1e9}, "guidance_scale"),
]
CALLS = {"image": image, "audio": audio, "video": video, "mesh": mesh}


@pytest.mark.parametrize(
    ("modality", "fields", "field"),
    [
        pytest.param(m, f, name, id=f"{m}-{name}-{i}")
        for i, (m, f, name) in enumerate(BAD_MEDIA_REQUESTS)
    ],
)
def test_bad_media_input_is_invalid_argument(
    channel: grpc.Channel, modality: str, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        CALLS[modality](channel, **fields)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(f"{field}:"), error.value.details()


def test_decompression_bomb_is_rejected_before_decoding(channel: grpc.Channel) -> None:
    # 20000 x 20000 pixels of one colour: a small PNG that would need 1.2 GB decoded.
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 1_000_000
    with pytest.raises(grpc.RpcError) as error:
        video(channel, image=buffer.getvalue())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixels exceed the limit" in (error.value.details() or "")
