"""Speech-to-text: real speech (espeak-ng) through a real server and Whisper tiny.en.

The upload's hook is tested on its own first (it must refuse any bad bytes with a reason
and nothing else), then the service over gRPC: word error rate, segment order, the final's
duration, refusals that leave the server serving, cancellation that stops the decode, and
a usage row for every call.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from genserve.contract.modalities.transcription import TranscriptionLimits, TranscriptionParams
from genserve.contract.spec import InvalidField
from genserve.server.errors import InvalidArgument
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.media.transcription import decode_audio, read_audio_header
from genserve.v1 import models_pb2, models_pb2_grpc, transcription_pb2, transcription_pb2_grpc
from tests.server_thread import ServerThread, make_settings
from tests.speech import (
    ESPEAK,
    ESPEAK_MISSING,
    SENTENCE,
    decode,
    duration_s,
    encode,
    repeated,
    speak,
    word_error_rate,
)

FORMATS = ("WAV", "FLAC", "OGG", "MP3")
MODEL = "whisper-tiny.en"
SERVICE = "genserve.v1.TranscriptionService"
# The server's limits in these tests: small enough to cross with a test file.
MAX_AUDIO_BYTES = 4 * 1024 * 1024
MAX_DURATION_S = 300.0
LONG_S = 240.0  # the cancelled file: eight 30 s windows of Whisper's
MAX_WER = 0.3
RATE = 22050  # espeak-ng's

LIMITS = TranscriptionLimits(max_audio_bytes=MAX_AUDIO_BYTES, max_duration_s=MAX_DURATION_S)


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    """A quiet warble: audio for the hook, which reads containers, not words."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(t)) * t)).astype(np.float32)


def header(data: bytes, limits: TranscriptionLimits = LIMITS) -> float:
    duration: float = read_audio_header(TranscriptionParams(audio=data), limits).duration_s
    return duration


def flac_claiming(samples: np.ndarray, rate: int, claimed_samples: int) -> bytes:
    """A FLAC whose STREAMINFO states fewer samples than it holds (a lying header)."""
    data = bytearray(encode(samples, rate, "FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first block
    # STREAMINFO starts at byte 8; bytes 10-17 of it pack rate, channels, bits and, in
    # their low 36 bits, the total sample count.
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | claimed_samples
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


# -- the hook, on its own -----------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
def test_hook_reads_the_duration_from_the_header(file_format: str) -> None:
    data = encode(tone(5.0), RATE, file_format)
    # MP3 frames pad the end to a whole frame (1152 samples)
    assert header(data) == pytest.approx(5.0, abs=0.06)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


def _bad_uploads() -> dict[str, tuple[bytes, str]]:
    wav = encode(tone(5.0), RATE, "WAV")
    flac = encode(tone(5.0), RATE, "FLAC")
    mp3 = encode(tone(5.0), RATE, "MP3")
    silent_wav = encode(np.zeros(0, dtype=np.float32), RATE, "WAV")
    return {
        "empty": (b"", "is empty"),
        "text": (b"this is not audio at all\n" * 40, "not a readable"),
        "png": (_png(), "must be WAV, FLAC, MP3 or OGG"),
        "wav-header-only": (wav[:44], "truncated"),
        "wav-cut-in-half": (wav[: len(wav) // 2], "truncated"),
        "wav-no-samples": (silent_wav, "holds no audio"),
        "flac-cut": (flac[: int(len(flac) * 0.9)], "truncated"),
        "mp3-cut": (mp3[: len(mp3) // 2], "truncated"),
        "too-long": (encode(tone(MAX_DURATION_S + 5), 8000, "OGG"), "exceed the limit of"),
        # Hours of audio behind a few seconds' header would be a decompression bomb.
        "flac-lying-header": (flac_claiming(tone(20.0), RATE, RATE), "more audio than"),
    }


BAD_UPLOADS = _bad_uploads()


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_hook_refuses_bad_audio_with_a_reason(name: str) -> None:
    data, reason = BAD_UPLOADS[name]
    with pytest.raises(InvalidField) as refused:
        header(data)
    assert refused.value.field == "audio" and reason in refused.value.problem


def test_hook_says_how_long_and_the_limit() -> None:
    with pytest.raises(InvalidField, match=r"audio: 8\.0 s exceed the limit of 5\.0 s"):
        header(encode(tone(8.0), RATE, "FLAC"), TranscriptionLimits(max_duration_s=5))


@pytest.mark.parametrize("file_format", FORMATS)
def test_hook_raises_nothing_but_invalid_field_on_damaged_bytes(file_format: str) -> None:
    data = encode(tone(3.0), RATE, file_format)
    rng = random.Random(f"damage-{file_format}")  # the same damage every run
    for _ in range(60):
        damaged = bytearray(data[: rng.randrange(1, len(data) + 1)])
        for _ in range(rng.randrange(0, 16)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            header(bytes(damaged))
        except InvalidField as refused:
            assert refused.field == "audio"


def test_decode_stops_at_the_duration_limit() -> None:
    """The engine's own bound, for a header the hook could not check."""
    data = encode(tone(6.0, 16_000), 16_000, "WAV")
    assert decode_audio(data, 10.0, lambda: False).size == 6 * 16_000
    with pytest.raises(InvalidArgument, match=r"more than the limit of 4\.0 s"):
        decode_audio(data, 4.0, lambda: False)


# -- the service, over gRPC ------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    assert ESPEAK is not None, ESPEAK_MISSING
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")


@pytest.fixture(scope="module")
def stt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The tiny profile's transcription model alone, under small upload limits."""
    tiny = load_manifest(manifest_path("tiny"))
    settings = make_settings(tmp_path_factory.mktemp("var"), transcription=LIMITS)
    server = ServerThread(settings, Manifest(transcription=tiny.transcription)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(stt_server: ServerThread) -> Iterator[transcription_pb2_grpc.TranscriptionServiceStub]:
    channel = stt_server.channel()
    yield transcription_pb2_grpc.TranscriptionServiceStub(channel)
    channel.close()


def transcribe(
    stub: transcription_pb2_grpc.TranscriptionServiceStub,
    audio: bytes,
    request_id: str,
    **fields: object,
) -> list[transcription_pb2.TranscriptionEvent]:
    request = transcription_pb2.TranscriptionRequest(audio=audio, **fields)  # type: ignore[arg-type]
    return list(stub.Generate(request, metadata=[("x-request-id", request_id)], timeout=120))


def transcript(events: list[transcription_pb2.TranscriptionEvent]) -> str:
    return "".join(e.segment.text for e in events if e.HasField("segment")).strip()


def test_lists_the_transcription_model(stt_server: ServerThread) -> None:
    with stt_server.channel() as channel:
        listing = models_pb2_grpc.ModelServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    (model,) = [m for m in listing.models if m.name == MODEL]
    assert model.modality == "transcription" and model.service == SERVICE
    assert model.engine == "faster-whisper" and model.state == "loaded"


@pytest.mark.parametrize("file_format", FORMATS)
def test_transcribes_speech(
    stub: transcription_pb2_grpc.TranscriptionServiceStub,
    stt_server: ServerThread,
    speech: bytes,
    file_format: str,
) -> None:
    samples, rate = decode(speech)
    audio = encode(samples, rate, file_format)
    request_id = f"stt-{file_format.lower()}"
    events = transcribe(stub, audio, request_id)

    *segments, final = events
    assert segments and all(e.HasField("segment") for e in segments)
    assert final.HasField("final")
    starts = [e.segment.start_s for e in segments]
    assert starts == sorted(starts)
    assert all(e.segment.end_s >= e.segment.start_s for e in segments)
    assert segments[-1].segment.end_s <= final.final.duration_s + 0.1

    text = transcript(events)
    wer = word_error_rate(SENTENCE, text)
    assert wer < MAX_WER, f"WER {wer:.2f}: heard {text!r}"
    assert final.final.duration_s == pytest.approx(duration_s(speech), abs=0.06)
    assert final.final.segments == len(segments)
    assert final.final.language == "en" and final.final.language_probability == 1.0
    assert final.final.timings.inference_ms > 0

    row = stt_server.wait_for_usage_row(request_id)
    assert row["status_code"] == "OK" and row["model"] == MODEL
    assert row["messages_out"] == len(events)


def _refusals(speech: bytes) -> dict[str, bytes]:
    samples, rate = decode(speech)
    flac = encode(samples, rate, "FLAC")
    return {
        "empty": b"",
        "truncated-wav": speech[: len(speech) // 2],
        "truncated-flac": flac[: int(len(flac) * 0.9)],
        "not-audio": _png(),
        "too-many-bytes": speech + bytes(MAX_AUDIO_BYTES),
        "too-long": encode(repeated(samples, rate, MAX_DURATION_S + 10), rate, "OGG"),
    }


@pytest.mark.parametrize(
    "name", ["empty", "truncated-wav", "truncated-flac", "not-audio", "too-many-bytes", "too-long"]
)
def test_bad_uploads_are_refused_and_the_server_keeps_serving(
    stub: transcription_pb2_grpc.TranscriptionServiceStub,
    stt_server: ServerThread,
    speech: bytes,
    name: str,
) -> None:
    audio = _refusals(speech)[name]
    request_id = f"stt-bad-{name}"
    with pytest.raises(grpc.RpcError) as refused:
        transcribe(stub, audio, request_id)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith("audio"), details
    assert stt_server.wait_for_usage_row(request_id)["status_code"] == "INVALID_ARGUMENT"

    events = transcribe(stub, speech, f"{request_id}-then-good")
    assert word_error_rate(SENTENCE, transcript(events)) < MAX_WER


def test_a_language_the_model_lacks_is_refused(
    stub: transcription_pb2_grpc.TranscriptionServiceStub, stt_server: ServerThread, speech: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        transcribe(stub, speech, "stt-french", language="fr")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("language")
    assert stt_server.wait_for_usage_row("stt-french")["status_code"] == "INVALID_ARGUMENT"


def test_cancelling_a_long_file_stops_the_decode(
    stub: transcription_pb2_grpc.TranscriptionServiceStub, stt_server: ServerThread, speech: bytes
) -> None:
    samples, rate = decode(speech)
    long = encode(repeated(samples, rate, LONG_S), rate, "OGG")
    assert len(long) < MAX_AUDIO_BYTES
    call = stub.Generate(
        transcription_pb2.TranscriptionRequest(audio=long),
        metadata=[("x-request-id", "stt-cancel")],
        timeout=300,
    )
    # Whisper decodes a 30 s window per step: read until the second window's segments
    # come, so that one window's time on this machine is measured, then leave.
    sent = time.perf_counter()
    arrivals: list[tuple[float, float]] = []  # (when, segment start)
    for event in call:
        assert event.HasField("segment")
        arrivals.append((time.perf_counter(), event.segment.start_s))
        if event.segment.start_s >= 30:
            break
    call.cancel()
    window_s = arrivals[-1][0] - arrivals[0][0]
    remaining_windows = (LONG_S - arrivals[-1][1]) / 30
    # Segments stream as Whisper decodes them: the second window comes a window's work
    # after the first (decoding the whole file first would send them all at once).
    first_s = arrivals[0][0] - sent
    assert window_s > 0.2 * first_s, (
        f"first segment at {first_s:.1f} s, second window +{window_s:.2f} s"
    )

    # A short file queued right after waits only for the window in progress when the
    # cancel landed, not for the rest of the long file (the engine runs one at a time).
    events = transcribe(stub, speech, "stt-after-cancel")
    waited_s = events[-1].final.timings.queued_ms / 1000
    assert remaining_windows >= 5
    assert waited_s < 2.5 * window_s + 0.5, (
        f"waited {waited_s:.1f} s behind a cancelled call; one window takes {window_s:.1f} s, "
        f"{remaining_windows:.0f} were left"
    )
    assert word_error_rate(SENTENCE, transcript(events)) < MAX_WER

    row = stt_server.wait_for_usage_row("stt-cancel")
    assert row["status_code"] == "CANCELLED" and row["model"] == MODEL
    assert row["messages_out"] >= len(arrivals)  # the server may have sent more than was read
