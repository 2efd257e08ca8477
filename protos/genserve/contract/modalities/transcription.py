"""Speech-to-text: an audio file in, the transcript streamed out segment by segment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract import samples
from genserve.contract.events import Timings, timings_to_pb
from genserve.contract.spec import Cost, Interaction, ModalitySpec, Upload, finite
from genserve.v1 import transcription_pb2


class TranscriptionLimits(BaseModel):
    """The settings section `transcription` (`--transcription.max-audio-bytes`, ...)."""

    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="the upload, encoded")
    max_duration_s: float = Field(600.0, gt=0, description="decoded length of the audio")
    max_queue: int = Field(16, ge=1, description="requests waiting for the model before 429")
    max_beam_size: int = Field(8, ge=1)
    max_prompt_chars: int = Field(1000, ge=1, description="initial_prompt, in characters")


class TranscriptionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    audio: bytes = Field(description="the recording: WAV, FLAC, MP3 or OGG")
    language: str = Field("", description='ISO 639-1 code, e.g. "en"; unset: detected')
    beam_size: int = Field(1, description="1: greedy")
    temperature: float = 0.0
    initial_prompt: str = Field("", description="words to expect: names, spelling")
    # Filled by the server once it has read the file's header, to price it.
    duration_s: float = Field(0.0, description="the audio's length, seconds")


def transcription_bounds(limits: TranscriptionLimits) -> dict[str, dict[str, Any]]:
    return {
        "audio": {"min_length": 1, "max_length": limits.max_audio_bytes},
        "language": {"pattern": r"^([a-z]{2,3})?$", "description": 'e.g. "en"; unset: detected'},
        "beam_size": {"ge": 1, "le": limits.max_beam_size},
        "temperature": finite(0, 1),
        "initial_prompt": {"max_length": limits.max_prompt_chars},
        "duration_s": {"ge": 0, "le": limits.max_duration_s},
    }


def transcription_cost(params: TranscriptionParams) -> Cost:
    return Cost(params.duration_s * params.beam_size, "audio seconds x beam_size")


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class TranscriptionFinal:
    language: str
    language_probability: float
    duration_s: float
    segments: int
    queued_ms: float
    inference_ms: float
    encoding_ms: float = 0.0
    replica: str = ""

    @property
    def timings(self) -> Timings:
        return Timings(self.queued_ms, self.inference_ms, self.encoding_ms, self.replica)


TranscriptionEvent = Segment | TranscriptionFinal


def transcription_event_to_pb(event: TranscriptionEvent) -> transcription_pb2.TranscriptionEvent:
    if isinstance(event, Segment):
        return transcription_pb2.TranscriptionEvent(
            segment=transcription_pb2.TranscriptSegment(
                start_s=event.start_s, end_s=event.end_s, text=event.text
            )
        )
    return transcription_pb2.TranscriptionEvent(
        final=transcription_pb2.TranscriptionFinal(
            language=event.language,
            language_probability=event.language_probability,
            duration_s=event.duration_s,
            timings=timings_to_pb(event.timings),
            segments=event.segments,
        )
    )


def transcript_text(segments: Iterable[str]) -> str:
    """The transcript from its segments: each stripped (Whisper starts each with a space),
    joined by one space."""
    return " ".join(text for segment in segments if (text := segment.strip()))


TRANSCRIPTION = ModalitySpec(
    name="transcription",
    aliases=("speech-to-text", "stt", "asr"),
    description="speech-to-text (Whisper): the transcript, segment by segment",
    proto_module=transcription_pb2,
    service_name="TranscriptionService",
    method="Generate",
    request_type=transcription_pb2.TranscriptionRequest,
    interaction=Interaction.TEXT_STREAM,
    params_type=TranscriptionParams,
    limits_type=TranscriptionLimits,
    settings_sections=("transcription",),
    bounds=transcription_bounds,
    cost=transcription_cost,
    mime_types=("text/plain",),
    http_path="/transcribe",
    sdk_timeout_s=600.0,
    engines={"faster-whisper": "genserve.server.media.transcription:load_transcription_engine"},
    default_engine="faster-whisper",
    upload=Upload("audio", "WAV, FLAC, MP3 or OGG", lambda limits: limits.max_audio_bytes),
    piece="segment",
    join=transcript_text,
    event_to_pb=transcription_event_to_pb,
    server_hook="genserve.server.media.transcription:read_audio_header",
    example=lambda: {"audio": samples.wav(1.0), "language": "en"},
)
