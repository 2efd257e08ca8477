"""Nothing lost, nothing wedged: usage rows for every call (unknown methods, calls cut by a
shutdown), retry delays on refusals, bounded shutdown, inputs inside the limits that
used to fail."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import av
import grpc
import pytest

from genserve.server.admission import AdmissionLimits, Cost, SpeedEstimate, admit
from genserve.server.errors import FailedPrecondition, InvalidArgument
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from genserve.v1 import image_pb2, image_pb2_grpc, text_pb2_grpc, video_pb2, video_pb2_grpc
from tests.media_calls import collect, png_bytes
from tests.server_thread import ServerThread, make_settings
from tests.text_calls import greedy


def test_a_one_frame_video_is_an_mp4_of_one_frame(channel: grpc.Channel) -> None:
    request = video_pb2.VideoGenerateRequest(
        image=png_bytes(), num_frames=1, num_inference_steps=1, seed=4
    )
    result = collect(video_pb2_grpc.VideoServiceStub(channel).Generate(request, timeout=120))
    assert result.final is not None and result.header is not None
    assert result.header.num_frames == 1
    with av.open(io.BytesIO(result.data), mode="r") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 1 and (frames[0].width, frames[0].height) == (64, 64)


def test_an_unknown_method_gets_unimplemented_and_a_usage_row(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    call = channel.unary_unary("/genserve.v1.TextService/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as error:
        call(b"\x0a\x02hi", metadata=(("x-request-id", "no-such-method"),), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    row = tiny_server.wait_for_usage_row("no-such-method")
    assert row["status_code"] == "UNIMPLEMENTED"
    assert row["method"] == "/genserve.v1.TextService/NoSuchMethod"


def test_a_full_queue_says_when_to_retry(tmp_path: Path) -> None:
    image_only = Manifest(image=load_manifest(manifest_path("tiny")).image)
    server = ServerThread(
        make_settings(tmp_path, media=MediaLimits(max_queue=1)), image_only
    ).start()
    refusals: list[grpc.RpcError] = []

    def ask(index: int) -> None:
        stub = image_pb2_grpc.ImageServiceStub(server.channel())
        request = image_pb2.ImageGenerateRequest(prompt="x", num_inference_steps=30)
        try:
            collect(stub.Generate(request, timeout=120))
        except grpc.RpcError as error:
            refusals.append(error)

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert refusals, "one running, one waiting: the others are refused"
    for refusal in refusals:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        trailing = dict(refusal.trailing_metadata() or ())  # type: ignore[attr-defined]
        assert int(trailing["retry-after"]) >= 1


def test_calls_cut_by_shutdown_get_rows_with_the_status_the_caller_saw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert text is not None
    settings = make_settings(tmp_path, shutdown_grace_s=0.5)
    server = ServerThread(settings, Manifest(text=(text,))).start()
    channel = server.channel()
    stream = text_pb2_grpc.TextServiceStub(channel).Generate(
        greedy(max_new_tokens=1000), metadata=(("x-request-id", "cut-by-stop"),), timeout=120
    )
    events = iter(stream)
    assert next(events).HasField("delta")
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    server.stop(grace=settings.shutdown_grace_s)
    stop_s = time.monotonic() - started
    with pytest.raises(grpc.RpcError) as error:
        list(events)
    seen = error.value.code()
    assert seen == grpc.StatusCode.UNAVAILABLE
    rows = server.usage_rows("cut-by-stop")
    assert [r["status_code"] for r in rows] == [seen.name]  # exactly one, as the caller saw
    assert stop_s < settings.shutdown_grace_s + 2
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# -- admission by cost -------------------------------------------------------------------


def test_an_image_past_the_models_pixel_cap_is_refused_before_it_starts(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    """1024x1024 is inside the service's limits, but one step of it alone runs over a
    minute on this CPU and cannot be interrupted: the model's own cap refuses it."""
    stub = image_pb2_grpc.ImageServiceStub(channel)
    request = image_pb2.ImageGenerateRequest(
        prompt="a", num_inference_steps=1, width=1024, height=1024
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        collect(stub.Generate(request, metadata=(("x-request-id", "too-big"),), timeout=30))
    assert time.monotonic() - started < 5  # refused, not run
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert "1048576 pixels" in details and "tiny-stable-diffusion" in details
    assert "65536" in details
    assert tiny_server.wait_for_usage_row("too-big")["status_code"] == "INVALID_ARGUMENT"


def test_a_request_estimated_past_its_deadline_is_refused_with_the_estimate(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    stub = image_pb2_grpc.ImageServiceStub(channel)
    # A completed request teaches the server this model's speed in pixel-steps per second.
    learn = image_pb2.ImageGenerateRequest(prompt="a", num_inference_steps=4, width=64, height=64)
    assert collect(stub.Generate(learn, timeout=120)).final is not None
    entry = tiny_server.server.registry.resolve(Modality.IMAGE, None)
    speed = entry.speed.units_per_s
    assert speed is not None and speed > 0
    big = image_pb2.ImageGenerateRequest(prompt="a", num_inference_steps=50, width=256, height=256)
    estimate_s = 256 * 256 * 50 / speed
    deadline_s = min(estimate_s / 4, 5.0)
    with pytest.raises(grpc.RpcError) as error:
        collect(stub.Generate(big, timeout=deadline_s))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.value.details() or ""
    assert "estimated" in details and "deadline" in details
    # Within its deadline, the same request is admitted.
    small = image_pb2.ImageGenerateRequest(prompt="a", num_inference_steps=1, width=64, height=64)
    assert collect(stub.Generate(small, timeout=120)).final is not None


def test_text_is_capped_by_cost_but_not_refused_for_its_deadline() -> None:
    """A text stream stops within a step at its deadline and is useful cut short; its
    max_new_tokens is a bound, not an estimate."""
    speed = SpeedEstimate()
    speed.observe(100, 1.0)  # 100 tokens/s
    limits = AdmissionLimits(max_cost=1000)
    untimed = Cost(900, "prompt tokens + max_new_tokens", timed=False)
    admit("m", untimed, limits, speed, time_remaining_s=0.5)  # 9 s of tokens, 0.5 s left: OK
    with pytest.raises(InvalidArgument, match="exceeds model m's limit of 1000"):
        admit("m", Cost(1001, "prompt tokens + max_new_tokens", timed=False), limits, speed, None)
    with pytest.raises(FailedPrecondition, match=r"estimated 9.0 s .* deadline of 0.5 s"):
        admit("m", Cost(900, "width x height x steps"), limits, speed, time_remaining_s=0.5)
