"""Batched diffusion: concurrent tiny-SD requests of one shape share the UNet.

The engines are real (the offline store's tiny Stable Diffusion); outputs are compared
byte for byte and parsed back with Pillow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from genserve.contract.events import Chunk, Final, Header, Progress
from genserve.contract.modalities.image import ImageParams
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.media.image_batching import BatchingImageEngine
from genserve.server.media.loaders import load_batching_image_engine, load_image_engine
from genserve.v1 import image_pb2, image_pb2_grpc
from tests.media_calls import collect
from tests.server_thread import ServerThread, make_settings

STEPS = 10
# Batched GEMMs may round differently from a batch of one (seen here: 1 of 255 in a few
# pixels for some seeds). A row mixed up with another's seed or step is off by far more.
KERNEL_ROUNDING = 2


def tiny_image_spec(**changes: Any) -> Any:
    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.IMAGE)
    assert spec is not None
    return spec.model_copy(update=changes)


def params(seed: int, prompt: str = "a red cube", **changes: Any) -> ImageParams:
    shape = {"width": 64, "height": 64, "num_inference_steps": STEPS, **changes}
    return ImageParams(prompt=prompt, seed=seed, **shape)


@dataclass
class Result:
    data: bytes = b""
    progress: list[int] = field(default_factory=list)
    header: Header | None = None
    final: Final | None = None


async def run_one(engine: Any, request: ImageParams, stop_after_steps: int = 0) -> Result:
    result = Result()
    stream = engine.generate(request)
    try:
        async for event in stream:
            if isinstance(event, Header):
                result.header = event
            elif isinstance(event, Progress):
                result.progress.append(event.step)
                if stop_after_steps and event.step >= stop_after_steps:
                    return result  # the caller leaves: the finally cancels it
            elif isinstance(event, Chunk):
                result.data += event.data
            elif isinstance(event, Final):
                result.final = event
    finally:
        await stream.aclose()
    return result


async def run_together(engine: Any, requests: list[tuple[ImageParams, int]]) -> list[Result]:
    return list(await asyncio.gather(*(run_one(engine, r, stop) for r, stop in requests)))


@pytest.fixture(scope="module")
def batching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchingImageEngine]:
    engine = load_batching_image_engine(
        tiny_image_spec(), make_settings(tmp_path_factory.mktemp("b"))
    )
    assert isinstance(engine, BatchingImageEngine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def solo(batching: BatchingImageEngine) -> dict[int, bytes]:
    """Each seed's picture, alone in the batching engine."""
    out = {}
    for seed in (1, 2, 3, 4):
        out[seed] = asyncio.run(run_one(batching, params(seed, f"prompt {seed}"))).data
    return out


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_picture(batched: bytes, alone: bytes) -> None:
    """The same bytes, or the same picture but for the kernels' rounding (printed)."""
    if batched != alone:
        difference = int(np.abs(pixels(batched) - pixels(alone)).max())
        print(f"batched picture differs from the solo one by at most {difference}/255")
        assert difference <= KERNEL_ROUNDING


def test_alone_the_batched_loop_gives_the_pipelines_own_bytes(
    solo: dict[int, bytes], tmp_path: Path
) -> None:
    serial = load_image_engine(tiny_image_spec(), make_settings(tmp_path))
    try:
        reference = asyncio.run(run_one(serial, params(1, "prompt 1")))
    finally:
        serial.close()
    assert reference.data == solo[1]


def test_a_batch_of_four_gives_each_seed_its_solo_bytes(
    batching: BatchingImageEngine, solo: dict[int, bytes]
) -> None:
    before = batching.stats().steps
    results = asyncio.run(
        run_together(batching, [(params(s, f"prompt {s}"), 0) for s in (1, 2, 3, 4)])
    )
    passes = batching.stats().steps - before
    for result, seed in zip(results, (1, 2, 3, 4), strict=True):
        assert_same_picture(result.data, solo[seed])
    # the four shared UNet passes: fewer than four requests' worth, at least one's
    assert STEPS <= passes < 4 * STEPS, passes
    for r in results:  # each request its own progress, every step once, in order
        assert r.progress == list(range(1, STEPS + 1))
        assert r.final is not None and r.final.total_bytes == len(r.data)


def test_cancelling_one_of_four_leaves_the_others_unchanged(
    batching: BatchingImageEngine, solo: dict[int, bytes]
) -> None:
    before = batching.stats()
    results = asyncio.run(
        run_together(
            batching,
            [(params(s, f"prompt {s}"), 3 if s == 2 else 0) for s in (1, 2, 3, 4)],
        )
    )
    # the cancelled one sent at most its PNG's head (sent before denoising), no pixels
    assert b"IDAT" not in results[1].data and results[1].final is None
    for index, seed in ((0, 1), (2, 3), (3, 4)):
        assert_same_picture(results[index].data, solo[seed])
    assert batching.wait_idle(30)
    assert batching.stats().cancelled == before.cancelled + 1


def test_another_shape_waits_for_the_batch_and_then_runs(batching: BatchingImageEngine) -> None:
    wide = params(5, width=128)
    results = asyncio.run(run_together(batching, [(params(1, "prompt 1"), 0), (wide, 0)]))
    with Image.open(io.BytesIO(results[1].data)) as image:
        assert image.size == (128, 64)
    assert results[1].progress == list(range(1, STEPS + 1))


def test_two_concurrent_requests_through_the_image_service(tmp_path: Path) -> None:
    manifest = Manifest(image=(tiny_image_spec(engine="diffusers-batched"),))
    server = ServerThread(make_settings(tmp_path), manifest).start()
    try:
        with server.channel() as channel:
            stub = image_pb2_grpc.ImageServiceStub(channel)

            def call(seed: int) -> Any:
                request = image_pb2.ImageGenerateRequest(
                    prompt="a red cube", seed=seed, width=64, height=64, num_inference_steps=4
                )
                return collect(stub.Generate(request, timeout=120))

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                results = list(pool.map(call, (7, 8)))
        for result in results:
            with Image.open(io.BytesIO(result.data)) as image:
                assert image.format == "PNG" and image.size == (64, 64)
        assert results[0].data != results[1].data  # two seeds, two pictures
    except grpc.RpcError as error:  # pragma: no cover - the failure's own words
        pytest.fail(f"{error.code()}: {error.details()}")
    finally:
        server.stop()
