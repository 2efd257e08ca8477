"""Speech-to-text with faster-whisper (CTranslate2): the upload's hook and the engine.

The hook runs before a request is queued: PyAV reads the container's header (format,
streams, duration) and decodes only the frames around the end the header claims, so a
file cut short, or one holding hours behind a header of seconds (a decompression bomb),
is refused with INVALID_ARGUMENT at the cost of a few frames. The engine decodes the
file on the model thread, again bounded by the duration limit, and streams Whisper's
segments as its lazy generator produces them.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import av
import numpy as np

from genserve.contract.modalities.transcription import (
    TRANSCRIPTION,
    Segment,
    TranscriptionEvent,
    TranscriptionFinal,
    TranscriptionLimits,
    TranscriptionParams,
)
from genserve.contract.spec import InvalidField
from genserve.server.engine.serial import Job, SerialEngine
from genserve.server.errors import InvalidArgument
from genserve.server.manifest import ModelSpec
from genserve.server.settings import Settings

logger = logging.getLogger(__name__)

TranscriptionEngine: TypeAlias = SerialEngine[TranscriptionParams, TranscriptionEvent]

ACCEPTED_FORMATS = frozenset({"wav", "flac", "mp3", "ogg"})  # PyAV's demuxer names
ACCEPTED_TEXT = "WAV, FLAC, MP3 or OGG"
SAMPLE_RATE = 16_000  # what Whisper's feature extractor takes
TAIL_S = 1.0  # how far before its claimed end the hook seeks to prove the data gets there
UNKNOWN_RIFF_SIZES = frozenset({0, 0xFFFFFFFF})  # written by streaming WAV writers


# -- the hook: header, duration, truncation ------------------------------------------------


def read_audio_header(
    params: TranscriptionParams, limits: TranscriptionLimits
) -> TranscriptionParams:
    """The upload's duration from its header, or InvalidField("audio", why)."""
    data = params.audio
    if not data:
        raise InvalidField("audio", "is empty")
    _check_riff_size(data)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            duration = _checked_duration(container, limits.max_duration_s)
    except InvalidField:
        raise
    # Untrusted bytes reach FFmpeg's parsers: whatever fails, the file is at fault, and
    # the caller gets a reason, never a traceback.
    except Exception as exc:
        raise InvalidField(
            "audio", f"is not a readable {ACCEPTED_TEXT} file ({type(exc).__name__})"
        ) from None
    return params.model_copy(update={"duration_s": duration})


def _check_riff_size(data: bytes) -> None:
    """FFmpeg quietly clips a WAV to the bytes present: its RIFF size says what was sent."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    claimed = int.from_bytes(data[4:8], "little")
    # +1: some writers leave an odd-sized chunk's pad byte out of the count
    if claimed not in UNKNOWN_RIFF_SIZES and claimed + 8 > len(data) + 1:
        raise InvalidField(
            "audio", f"is truncated: its WAV header says {claimed + 8} bytes, got {len(data)}"
        )


def _checked_duration(container: Any, max_duration_s: float) -> float:
    if container.format.name not in ACCEPTED_FORMATS:
        raise InvalidField("audio", f"must be {ACCEPTED_TEXT}, got {container.format.long_name}")
    if container.streams.video:
        raise InvalidField("audio", "holds video; send the audio track alone")
    if not container.streams.audio:
        raise InvalidField("audio", "holds no audio stream")
    stream = container.streams.audio[0]
    duration = _header_duration(container, stream)
    if duration is None:
        # No duration in the container: count decoded samples, up to just past the limit.
        duration = _decoded_duration(container, stream, max_duration_s)
    _check_duration(duration, max_duration_s)
    if duration > 0:
        _check_extent(container, stream, duration)
    return duration


def _header_duration(container: Any, stream: Any) -> float | None:
    if container.duration is not None and container.duration > 0:
        return float(container.duration / av.time_base)
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _decoded_duration(container: Any, stream: Any, max_duration_s: float) -> float:
    samples = 0
    rate = stream.sample_rate or 1
    for frame in container.decode(stream):
        samples += frame.samples
        if samples / rate > max_duration_s:
            break  # enough to refuse it; no need to decode the rest
    return samples / rate


def _check_duration(duration: float, max_duration_s: float) -> None:
    if duration <= 0:
        raise InvalidField("audio", "holds no audio (empty or truncated)")
    if duration > max_duration_s:
        raise InvalidField("audio", f"{duration:.1f} s exceed the limit of {max_duration_s} s")


def _check_extent(container: Any, stream: Any, duration: float) -> None:
    """Seeks to just before the claimed end and decodes to the stream's end: a FLAC or MP3
    cut short keeps its header's duration and is refused here, rather than in Whisper; a
    header claiming less than the data holds (hours behind a few seconds' header) is
    refused at the first frame past its claim, so neither costs more than a few frames."""
    start = container.start_time / av.time_base if container.start_time is not None else 0.0
    end = start + duration
    tolerance = max(0.25, 0.01 * duration)
    container.seek(int(max(start, end - TAIL_S) * av.time_base), backward=True)
    reached: float | None = None
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                return  # no timestamps to compare: the engine's bounded decode still holds
            if frame.time > end + tolerance:
                raise InvalidField(
                    "audio", f"holds more audio than the {duration:.1f} s its header says"
                )
            reached = frame.time + frame.samples / frame.sample_rate
    except av.FFmpegError as exc:
        raise InvalidField(
            "audio", f"is truncated or damaged: its last second does not decode ({exc.strerror})"
        ) from None
    if reached is None or reached < end - tolerance:
        ends = f"{reached:.1f} s" if reached is not None else "before it"
        raise InvalidField(
            "audio", f"is truncated: its header says {duration:.1f} s, its data ends at {ends}"
        )


# -- decoding, on the model thread -------------------------------------------------------


def decode_audio(data: bytes, max_duration_s: float, cancelled: Callable[[], bool]) -> np.ndarray:
    """The file as 16 kHz mono float32, at most max_duration_s (plus a second's slack for
    rounding); longer is refused rather than held in memory."""
    limit = int((max_duration_s + 1) * SAMPLE_RATE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = container.decode(container.streams.audio[0])
            for frame in _with_flush(frames):
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += piece.size
                if total > limit:
                    raise InvalidArgument(
                        "audio", f"decodes to more than the limit of {max_duration_s} s"
                    )
                if cancelled():
                    return np.zeros(0, dtype=np.float32)
    except InvalidArgument:
        raise
    except Exception as exc:  # the hook read the header and the end; the middle may be bad
        seconds = total / SAMPLE_RATE
        raise InvalidArgument(
            "audio", f"could not be decoded after {seconds:.1f} s ({type(exc).__name__})"
        ) from None
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def _with_flush(frames: Any) -> Any:
    """The decoded frames, then None: the resampler's signal to flush what it holds."""
    yield from frames
    yield None


# -- the engine --------------------------------------------------------------------------


def load_transcription_engine(spec: ModelSpec, settings: Settings) -> TranscriptionEngine:
    from faster_whisper import WhisperModel

    source = spec.resolved_source(settings.model_store)
    # CTranslate2 on CUDA needs cuBLAS and cuDNN libraries that the CPU torch wheel does
    # not bring: "auto" means the CPU here; a manifest says "cuda" where they exist.
    device = "cuda" if spec.device == "cuda" else "cpu"
    compute_type = spec.dtype if spec.dtype != "auto" else "int8" if device == "cpu" else "float16"
    logger.info("loading %s from %s on %s (%s)", spec.name, source, device, compute_type)
    # cpu_threads=0: CTranslate2's default; no settings knob is meant for this engine.
    model = WhisperModel(source, device=device, compute_type=compute_type, cpu_threads=0)
    english_only = not model.model.is_multilingual
    languages = frozenset(model.supported_languages)
    limits: TranscriptionLimits = TRANSCRIPTION.limits_from(settings.sections())

    def work(params: TranscriptionParams, job: Job[TranscriptionEvent]) -> None:
        if english_only and params.language not in ("", "en"):
            raise InvalidArgument(
                "language", f"{spec.name} transcribes English only, got {params.language!r}"
            )
        if params.language and params.language not in languages:
            raise InvalidArgument(
                "language", f"{spec.name} knows no language {params.language!r} (ISO 639-1)"
            )
        audio = decode_audio(params.audio, limits.max_duration_s, lambda: job.cancelled)
        job.check_cancelled()
        segments, info = model.transcribe(
            audio,
            language=params.language or None,
            beam_size=params.beam_size,
            temperature=params.temperature,
            initial_prompt=params.initial_prompt or None,
            vad_filter=False,
        )
        count = 0
        # The generator decodes one 30 s window per step: each segment goes out as it
        # comes, and a caller that left stops the decode before the next window.
        for segment in segments:
            job.emit(Segment(float(segment.start), float(segment.end), segment.text))
            count += 1
            job.check_cancelled()
        job.emit(
            TranscriptionFinal(
                language=info.language,
                language_probability=float(info.language_probability),
                duration_s=float(info.duration),
                segments=count,
                queued_ms=job.queued_ms,
                inference_ms=(time.perf_counter() - job.started) * 1000,
            )
        )

    return SerialEngine(
        spec.name,
        work,
        max_queue=limits.max_queue,
        memory_bytes=_weights_bytes(source),
    )


def _weights_bytes(source: str) -> int:
    """The CTranslate2 weights' size on disk, for the registry's memory budget (int8 on
    the CPU holds less; a hub id has no folder to measure)."""
    weights = Path(source) / "model.bin"
    return weights.stat().st_size if weights.is_file() else 0
