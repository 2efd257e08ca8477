"""Each tiny pipeline on CUDA, at the manifest's `auto` dtype (float16 on CUDA).

Marked `gpu`: skipped where torch sees no CUDA device (conftest).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import grpc
import pytest
import soundfile
from PIL import Image

from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.v1 import models_pb2, models_pb2_grpc
from tests.server_thread import ServerThread, make_settings
from tests.test_media import audio, image, mesh, video
from tests.text_calls import generate, greedy

pytestmark = pytest.mark.gpu


def cuda_manifest() -> Manifest:
    manifest = load_manifest(manifest_path("tiny"))
    changes = {}
    for name in ("text", "audio", "image", "video", "mesh", "embedding"):
        spec = getattr(manifest, name)
        changes[name] = spec.model_copy(update={"device": "cuda"})
    return manifest.model_copy(update=changes)


@pytest.fixture(scope="module")
def cuda_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    server = ServerThread(make_settings(tmp_path_factory.mktemp("gpu")), cuda_manifest()).start()
    channel = server.channel()
    yield channel
    channel.close()
    server.stop()


def test_every_model_is_on_cuda(cuda_channel: grpc.Channel) -> None:
    listing = models_pb2_grpc.ModelServiceStub(cuda_channel).ListModels(
        models_pb2.ListModelsRequest()
    )
    for model in listing.models:
        assert model.state == "loaded", model
        assert model.device.startswith("cuda"), model


def test_text_on_cuda(cuda_channel: grpc.Channel) -> None:
    assert generate(cuda_channel, greedy(max_new_tokens=8)).final is not None


def test_media_on_cuda(cuda_channel: grpc.Channel, tmp_path: Path) -> None:
    png = image(cuda_channel, num_inference_steps=2)
    assert Image.open(io.BytesIO(png.data)).size == (64, 64)
    wav = audio(cuda_channel, seed=1)
    assert soundfile.read(io.BytesIO(wav.data))[1] == 24_000
    mp4 = video(cuda_channel, num_frames=4, num_inference_steps=2)
    with av.open(io.BytesIO(mp4.data), mode="r") as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    obj = mesh(cuda_channel)
    assert obj.header is not None and obj.header.face_count > 0
