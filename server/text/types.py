"""Plain Python types of a text generation request and its events (no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop sequence
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # the caller went away, or the server is stopping


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextRequest:
    messages: tuple[ChatTurn, ...]
    params: SamplingParams


@dataclass(frozen=True)
class TextDelta:
    text: str
    completion_tokens: int


@dataclass(frozen=True)
class TextFinal:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seed: int
    queued_ms: float
    inference_ms: float
    replica: str = ""  # the Ray Serve replica that made it (placement = "ray")


TextEvent = TextDelta | TextFinal
