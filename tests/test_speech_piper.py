"""Real speech: piper's en_US-joe-medium voice, streamed as it is spoken, heard back by the
server's own speech-to-text (Whisper tiny.en).

Each way in says one fixed English sentence: gRPC, the bridge's seed route and the
openai SDK; the WAV parses at the voice's rate and Whisper hears it with a word error
rate under 0.3. A three-sentence prompt streams: its first audio chunk arrives before
half of the whole synthesis has passed. Bad voice parameters are refused with
INVALID_ARGUMENT naming the field and its limit, and the server keeps serving.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest
import soundfile

from genserve.bridge.settings import BridgeSettings
from genserve.contract import Modality
from genserve.contract.limits import AudioLimits
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.media.wav_stream import STREAMED_SIZE
from genserve.server.upstream.media_checks import WavCheck
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    common_pb2,
    models_pb2,
    models_pb2_grpc,
    transcription_pb2,
    transcription_pb2_grpc,
)
from tests.bridge_thread import BridgeThread
from tests.media_calls import MediaResult, collect
from tests.server_thread import ServerThread, make_settings
from tests.speech import word_error_rate

pytest.importorskip("piper", reason="piper-tts is the optional `speech` extra")

MODEL = "piper-joe-medium"
VOICE = "en_US-joe-medium"
RATE = 22_050  # the voice's, from its .onnx.json
SENTENCE = "Good morning. Thank you for listening to this short test of the speech service."
THREE_SENTENCES = (
    "The weather is calm and clear this morning. "
    "We will meet at the library after lunch today. "
    "Please bring your notes and a warm coat with you."
)
MAX_WER = 0.3
MAX_TTFA_RATIO = 0.5
LIMITS = AudioLimits()  # the server's, in these tests


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The tiny profile's default speech model and its transcription model."""
    tiny = load_manifest(manifest_path("tiny"))
    piper = next(spec for spec in tiny.audio if spec.name == MODEL)
    settings = make_settings(tmp_path_factory.mktemp("var"))  # default 64 KiB chunks
    server = ServerThread(settings, Manifest(audio=(piper,), transcription=tiny.transcription))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(speech_server: ServerThread) -> Iterator[grpc.Channel]:
    channel = speech_server.channel()
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def speech_bridge(speech_server: ServerThread) -> Iterator[BridgeThread]:
    bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{speech_server.port}")).start()
    yield bridge
    bridge.stop()


@pytest.fixture(scope="module")
def bridge_http(speech_bridge: BridgeThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=speech_bridge.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def openai_client(speech_bridge: BridgeThread):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{speech_bridge.url}/v1", api_key="unused", max_retries=0)


@dataclass
class TimedResult:
    result: MediaResult
    arrivals: list[tuple[str, float]] = field(default_factory=list)  # (kind, s since sent)

    def first(self, kind: str) -> float:
        return next(t for k, t in self.arrivals if k == kind)


def say(channel: grpc.Channel, prompt: str, **fields: object) -> TimedResult:
    """The stream of one request, with each event's arrival time."""
    stub = audio_pb2_grpc.AudioServiceStub(channel)
    request = audio_pb2.AudioGenerateRequest(prompt=prompt, **fields)  # type: ignore[arg-type]
    arrivals: list[tuple[str, float]] = []
    events: list[common_pb2.MediaEvent] = []
    sent = time.perf_counter()
    for event in stub.Generate(request, timeout=120):
        arrivals.append((event.WhichOneof("event") or "", time.perf_counter() - sent))
        events.append(event)
    return TimedResult(collect(events), arrivals)


def transcribe(channel: grpc.Channel, wav: bytes) -> str:
    stub = transcription_pb2_grpc.TranscriptionServiceStub(channel)
    request = transcription_pb2.TranscriptionRequest(audio=wav, language="en")
    events = stub.Generate(request, timeout=120)
    return "".join(e.segment.text for e in events if e.HasField("segment")).strip()


def wav_of(data: bytes, rate: int = RATE) -> np.ndarray:
    samples, read_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert read_rate == rate
    assert samples.ndim == 1 and len(samples) > rate // 2  # mono, half a second at least
    return np.asarray(samples)


def data_chunk_size(wav: bytes) -> int:
    """The size the data chunk declares, past fmt and any other chunk (LIST: provenance)."""
    at = 12
    while wav[at : at + 4] != b"data":
        at += 8 + (size := int.from_bytes(wav[at + 4 : at + 8], "little")) + (size & 1)
    return int.from_bytes(wav[at + 4 : at + 8], "little")


def assert_heard(channel: grpc.Channel, wav: bytes, sentence: str = SENTENCE) -> float:
    wav_of(wav)
    heard = transcribe(channel, wav)
    wer = word_error_rate(sentence, heard)
    print(f"WER {wer:.2f}: heard {heard!r}")
    assert wer < MAX_WER, f"WER {wer:.2f}: heard {heard!r}"
    return wer


# -- the manifest ------------------------------------------------------------------------


def test_piper_is_the_tiny_profiles_speech_default_and_bark_stays_beside_it() -> None:
    tiny = load_manifest(manifest_path("tiny"))
    default = tiny.spec_for(Modality.AUDIO)
    assert default is not None and (default.name, default.engine) == (MODEL, "piper")
    assert {spec.name for spec in tiny.specs(Modality.AUDIO)} == {MODEL, "tiny-bark"}


def test_lists_the_piper_model(channel: grpc.Channel) -> None:
    listing = models_pb2_grpc.ModelServiceStub(channel).ListModels(
        models_pb2.ListModelsRequest(), timeout=10
    )
    (model,) = [m for m in listing.models if m.modality == "audio"]
    assert (model.name, model.engine, model.state) == (MODEL, "piper", "loaded")
    assert model.memory_bytes > 10_000_000  # the 63 MB voice
    assert VOICE in listing.limits["audio"]["voice_presets"]


# -- the round trip: gRPC, the seed route, the openai SDK -----------------------------------


def test_grpc_speech_is_heard_back(channel: grpc.Channel) -> None:
    timed = say(channel, SENTENCE)
    result = timed.result
    assert result.kinds[0] == "header" and result.kinds[-1] == "final"
    assert result.header is not None and result.final is not None
    assert (result.header.mime_type, result.header.sample_rate) == ("audio/wav", RATE)
    assert result.header.duration_s == 0  # not known when the header leaves
    assert result.final.total_bytes == len(result.data) and result.final.sha256 == result.sha256
    seconds = len(wav_of(result.data)) / RATE
    synthesis_s = result.final.timings.inference_ms / 1000
    print(f"piper: {seconds:.2f} s of speech in {synthesis_s:.2f} s")
    assert 0 < synthesis_s < seconds  # faster than it is spoken, even here
    assert_heard(channel, result.data)


def test_seed_route_speech_is_heard_back(bridge_http: httpx.Client, channel: grpc.Channel) -> None:
    response = bridge_http.get("/generate/audio", params={"prompt": SENTENCE, "preset": VOICE})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert_heard(channel, response.content)


def test_openai_sdk_speech_is_heard_back(openai_client) -> None:  # type: ignore[no-untyped-def]
    speech = openai_client.audio.speech.create(
        model=MODEL, voice="alloy", input=SENTENCE, response_format="wav"
    )
    wav = speech.content
    wav_of(wav)
    # and heard through the SDK too: the bridge's transcription route, OpenAI's shape
    heard = openai_client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", wav, "audio/wav"), language="en"
    ).text
    wer = word_error_rate(SENTENCE, heard)
    print(f"WER {wer:.2f} (openai SDK both ways): heard {heard!r}")
    assert wer < MAX_WER, f"WER {wer:.2f}: heard {heard!r}"


def test_every_openai_voice_name_is_the_installed_voice(  # type: ignore[no-untyped-def]
    openai_client,
) -> None:
    for voice in ("echo", "shimmer"):
        wav = openai_client.audio.speech.create(
            model=MODEL, voice=voice, input="Hello.", response_format="wav"
        ).content
        wav_of(wav)


# -- streamed as it is spoken -------------------------------------------------------------


def test_three_sentences_stream_one_by_one(channel: grpc.Channel) -> None:
    timed = say(channel, THREE_SENTENCES)
    result = timed.result
    # one progress event per sentence, each followed by that sentence's samples
    assert [(p.step, p.total_steps, p.stage) for p in result.progress] == [
        (1, 3, "speak"),
        (2, 3, "speak"),
        (3, 3, "speak"),
    ]
    assert len(result.chunks) >= 3
    first_chunk, whole = timed.first("chunk"), timed.first("final")
    ratio = first_chunk / whole
    began = timed.first("header")  # sent as synthesis starts
    print(
        f"piper TTFA {first_chunk * 1000:.0f} ms of {whole * 1000:.0f} ms: ratio {ratio:.2f} "
        f"(from the header: {(first_chunk - began) / (whole - began):.2f})"
    )
    assert ratio < MAX_TTFA_RATIO, f"first audio at {first_chunk:.2f} s of {whole:.2f} s"
    # the first chunk holds audio, not the header alone
    assert len(result.chunks[0].data) > 44 + RATE // 10
    # the placeholder sizes of a WAV written while streaming, as the upstream reader knows it
    data = result.data
    assert data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") == STREAMED_SIZE
    assert data_chunk_size(data) == STREAMED_SIZE
    check = WavCheck(MODEL, max_seconds=60)
    for chunk in result.chunks:
        check.feed(chunk.data)
    check.finish()
    assert_heard(channel, data, THREE_SENTENCES)


def test_seed_route_streams_as_it_speaks(bridge_http: httpx.Client) -> None:
    sent = time.perf_counter()
    with bridge_http.stream("GET", "/generate/audio", params={"prompt": THREE_SENTENCES}) as reply:
        assert reply.status_code == 200
        pieces = reply.iter_raw()
        first = next(pieces)
        first_at = time.perf_counter() - sent
        body = first + b"".join(pieces)
    whole = time.perf_counter() - sent
    assert first_at / whole < MAX_TTFA_RATIO, f"first bytes at {first_at:.2f} s of {whole:.2f} s"
    wav_of(body)


# -- the voice's parameters -----------------------------------------------------------------


def test_sample_rate_is_the_callers(channel: grpc.Channel) -> None:
    result = say(channel, "Hello there.", sample_rate=16_000).result
    assert result.header is not None and result.header.sample_rate == 16_000
    native = wav_of(say(channel, "Hello there.").result.data)
    resampled = wav_of(result.data, 16_000)
    assert len(resampled) / 16_000 == pytest.approx(len(native) / RATE, rel=0.2)


def test_speed_changes_the_speaking_rate(channel: grpc.Channel) -> None:
    slow = wav_of(say(channel, SENTENCE, speed=LIMITS.min_speed).result.data)
    fast = wav_of(say(channel, SENTENCE, speed=LIMITS.max_speed).result.data)
    # 0.5 vs 2: four times as long, give or take the pauses
    assert 2.5 < len(slow) / len(fast) < 5.5


TOO_LONG = "Speak. " * (LIMITS.max_prompt_chars // 7 + 1)

BAD_REQUESTS = {
    "unknown-voice": ({"preset": "en_GB-nobody-low"}, "preset", "en_US-joe-medium"),
    "bark-preset": ({"preset": "v2/en_speaker_1"}, "preset", f"model {MODEL} has the voices"),
    "too-long": ({"prompt": TOO_LONG}, "prompt", f"limit of {LIMITS.max_prompt_chars}"),
    "too-fast": ({"speed": 4.0}, "speed", f"between {LIMITS.min_speed} and {LIMITS.max_speed}"),
    "too-slow": ({"speed": 0.1}, "speed", f"between {LIMITS.min_speed} and {LIMITS.max_speed}"),
    "speed-nan": ({"speed": float("nan")}, "speed", "NaN"),
    "rate-too-high": ({"sample_rate": 96_000}, "sample_rate", str(LIMITS.max_sample_rate)),
    "rate-too-low": ({"sample_rate": 100}, "sample_rate", str(LIMITS.min_sample_rate)),
    "rate-zero": ({"sample_rate": 0}, "sample_rate", f"between {LIMITS.min_sample_rate}"),
}


def test_text_with_nothing_to_pronounce_is_a_wav_without_samples(channel: grpc.Channel) -> None:
    result = say(channel, "\u0097\U000c424a ...").result
    assert result.progress == [] and result.final is not None
    samples, rate = soundfile.read(io.BytesIO(result.data))
    assert (len(samples), rate) == (0, RATE)


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_voice_parameters_are_refused_and_the_server_keeps_serving(
    channel: grpc.Channel, name: str
) -> None:
    fields, field_name, limit = BAD_REQUESTS[name]
    request = {"prompt": "Hello.", **fields}
    prompt = str(request.pop("prompt"))
    with pytest.raises(grpc.RpcError) as refused:
        say(channel, prompt, **request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith(f"{field_name}:") and limit in details, details
    assert say(channel, "Still here.").result.final is not None


def test_openai_speed_and_voice_are_bounded_by_the_bridge(  # type: ignore[no-untyped-def]
    openai_client,
) -> None:
    import openai

    for bad in ({"speed": 4.0}, {"voice": "nobody"}):
        fields = {"voice": "alloy", **bad}
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            openai_client.audio.speech.create(model=MODEL, input="Hi.", **fields)
        assert next(iter(bad)) in str(refused.value.body)
    wav = openai_client.audio.speech.create(
        model=MODEL, voice="nova", input=SENTENCE, speed=1.5, response_format="wav"
    ).content
    wav_of(wav)
