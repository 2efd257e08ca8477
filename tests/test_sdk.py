"""The Python SDK, sync and async, against a real server."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import soundfile
from PIL import Image

from genserve.client import (
    AsyncGenServe,
    DeadlineExceededError,
    FailedPreconditionError,
    GenServe,
    GenServeError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Progress,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from genserve.client.channel import should_retry
from genserve.client.errors import from_rpc_error
from tests.server_thread import ServerThread, make_settings
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from genserve.server.text.types import FinishReason
from tests.media_calls import png_bytes
from tests.text_calls import served_text_engine


@pytest.fixture(scope="module")
def gs(tiny_server: ServerThread) -> Iterator[GenServe]:
    with GenServe(f"localhost:{tiny_server.port}") as client:
        yield client


# -- sync, every modality ---------------------------------------------------------------


def test_text_stream_and_generate(gs: GenServe) -> None:
    deltas = list(gs.text.stream("What is FastAPI?", max_new_tokens=8, do_sample=False))
    assert len(deltas) >= 3
    result = gs.text.generate("What is FastAPI?", max_new_tokens=8, do_sample=False)
    assert result.text == "".join(deltas)
    assert result.finish_reason == "length" and result.completion_tokens == 8
    assert result.request_id


def test_image_with_progress(gs: GenServe, tmp_path: Path) -> None:
    steps: list[Progress] = []
    result = gs.image.generate("a cozy living room", steps=3, seed=5, on_progress=steps.append)
    assert [p.step for p in steps] == [1, 2, 3]
    assert result.header.mime_type == "image/png" and result.seed == 5
    saved = result.save(tmp_path)
    assert saved.name == result.header.file_name
    assert Image.open(saved).size == (64, 64)


def test_audio_video_mesh_embeddings(gs: GenServe, tmp_path: Path) -> None:
    audio = gs.audio.generate("Hello", preset="v2/en_speaker_9")
    assert soundfile.read(io.BytesIO(audio.data))[1] == audio.header.sample_rate
    source = tmp_path / "room.png"
    source.write_bytes(png_bytes())
    video = gs.video.generate(source, num_frames=3, steps=1)
    assert video.header.num_frames == 3 and video.data[4:8] == b"ftyp"
    mesh = gs.mesh.generate("a chair", steps=2, format="ply")
    assert mesh.header.face_count > 0 and mesh.data.startswith(b"ply")
    vectors = gs.embeddings.create(["one", "two"])
    assert len(vectors) == 2 and len(vectors[0]) == 384


def test_health_and_models(gs: GenServe) -> None:
    assert gs.health() == "SERVING"
    assert gs.health("genserve.v1.ImageService") == "SERVING"
    assert {m.modality for m in gs.models()} >= {"text", "image", "audio", "video", "mesh"}


def test_stopping_iteration_cancels_on_the_server(gs: GenServe, tiny_server: ServerThread) -> None:
    engine = served_text_engine(tiny_server)
    for count, _ in enumerate(gs.text.stream("Tell me a story", max_new_tokens=400), start=1):
        if count == 3:
            break
    assert engine.wait_idle(60)
    assert engine.last_final is not None
    assert engine.last_final.finish_reason is FinishReason.CANCELLED


# -- async, every modality ---------------------------------------------------------------


def test_async_client_every_modality(tiny_server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncGenServe(f"localhost:{tiny_server.port}") as client:
            deltas = [d async for d in client.text.stream("Hi", max_new_tokens=5, do_sample=False)]
            assert len(deltas) >= 2
            text = await client.text.generate("Hi", max_new_tokens=5, do_sample=False)
            assert text.text == "".join(deltas)
            steps: list[Progress] = []
            image = await client.image.generate("room", steps=2, on_progress=steps.append)
            assert len(steps) == 2 and Image.open(io.BytesIO(image.data)).format == "PNG"
            audio = await client.audio.generate("Hello")
            assert audio.header.mime_type == "audio/wav"
            video = await client.video.generate(png_bytes(), num_frames=2, steps=1)
            assert video.header.num_frames == 2
            mesh = await client.mesh.generate("a chair", steps=2)
            assert mesh.header.mime_type == "model/obj"
            assert len((await client.embeddings.create(["x"]))[0]) == 384
            assert await client.health() == "SERVING"
            assert await client.models()
            with pytest.raises(InvalidArgumentError):
                await client.text.generate("Hi", top_p=3.0)

    asyncio.run(scenario())


# -- errors -----------------------------------------------------------------------------


def test_invalid_argument_carries_code_message_and_request_id(gs: GenServe) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        gs.text.generate("Hi", temperature=-1.0, request_id="sdk-bad")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message.startswith("temperature:")
    assert error.value.request_id == "sdk-bad"


def test_deadline_exceeded(gs: GenServe) -> None:
    with pytest.raises(DeadlineExceededError):
        gs.text.generate(
            "Write a long essay on the history of computing.", max_new_tokens=1500, timeout=0.5
        )


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with GenServe("localhost:1", max_retries=1) as client, pytest.raises(UnavailableError):
        client.health()


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    ],
)
def test_error_classes_by_code(code: grpc.StatusCode, error_class: type[GenServeError]) -> None:
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")
    error = from_rpc_error(rpc_error, "rid")
    assert isinstance(error, error_class)
    assert (error.code, error.message, error.request_id) == (code, "details", "rid")


def text_server_with(tmp_path: Path, **changes: Any) -> ServerThread:
    text = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert text is not None
    return ServerThread(make_settings(tmp_path), Manifest(text=(text.model_copy(update=changes),)))


def test_retries_a_model_still_loading_but_not_a_failed_one_nor_invalid_input(
    tmp_path: Path,
) -> None:
    loading = text_server_with(tmp_path / "loading").start(load=False)  # preload not run
    broken = text_server_with(
        tmp_path / "broken", source=str(tmp_path / "none"), gguf_file=None
    ).start()
    try:
        with GenServe(f"localhost:{loading.port}", max_retries=2) as client:
            with pytest.raises(UnavailableError, match="still loading"):
                client.text.generate("Hi", request_id="retried")
            with pytest.raises(InvalidArgumentError):
                client.text.generate("", request_id="not-retried")
        loading.server.usage_log.flush()
        assert len(loading.usage_rows("retried")) == 3  # the call and two retries
        assert len(loading.usage_rows("not-retried")) == 1
        # A model that failed to load fails the same way every time: no retry.
        with (
            GenServe(f"localhost:{broken.port}", max_retries=2) as client,
            pytest.raises(FailedPreconditionError, match="failed to load"),
        ):
            client.text.generate("Hi", request_id="failed-model")
        broken.server.usage_log.flush()
        assert len(broken.usage_rows("failed-model")) == 1
    finally:
        loading.stop()
        broken.stop()
    # once data has arrived, UNAVAILABLE is not retried (it would repeat output)
    unavailable = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert should_retry(unavailable, received_anything=False, attempt=0, limit=3)
    assert not should_retry(unavailable, received_anything=True, attempt=0, limit=3)


def test_resource_exhausted_when_the_queue_is_full(tmp_path: Path) -> None:
    image_only = Manifest(image=load_manifest(manifest_path("tiny")).image)
    server = ServerThread(
        make_settings(tmp_path, media=MediaLimits(max_queue=1)), image_only
    ).start()
    errors: list[Exception] = []
    started = threading.Event()
    try:
        with GenServe(f"localhost:{server.port}") as client:

            def slow() -> None:
                try:
                    client.image.generate(
                        "x", steps=60, width=128, height=128, on_progress=lambda p: started.set()
                    )
                except Exception as error:
                    errors.append(error)

            threads = [threading.Thread(target=slow) for _ in range(2)]  # one runs, one waits
            for thread in threads:
                thread.start()
            assert started.wait(60)
            # The second one waits in the queue (the threads may start in either order).
            engine = server.server.registry.resolve(Modality.IMAGE, None).engine
            assert engine is not None
            deadline = time.monotonic() + 60
            while engine.stats().queued < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            # max_retries=0: by default the SDK waits out the server's retry-after and tries
            # again, which a queue this busy may well refuse again.
            with (
                GenServe(f"localhost:{server.port}", max_retries=0) as once,
                pytest.raises(ResourceExhaustedError) as refused,
            ):
                once.image.generate("x", steps=1)
            assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
            for thread in threads:
                thread.join()
        assert not errors
    finally:
        server.stop()


def test_internal_error(tmp_path: Path) -> None:
    from tests.test_lifecycle import ExplodingEngine

    text = load_manifest(manifest_path("tiny")).text
    server = ServerThread(
        make_settings(tmp_path),
        Manifest(text=text),
        loader_for=lambda modality, spec: lambda spec: ExplodingEngine(),
    ).start()
    try:
        with GenServe(f"localhost:{server.port}") as client, pytest.raises(InternalError) as error:
            client.text.generate("Hi", request_id="sdk-internal")
        assert "request_id=sdk-internal" in error.value.message
    finally:
        server.stop()
