"""What the SDK returns: plain dataclasses, no protobuf. Media headers, progress and
timings are the contract's own event classes (genserve.contract.events)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from genserve.contract.events import Header, Timings
from genserve.contract.limits import limits_from_struct
from genserve.contract.modalities.transcription import Segment


@dataclass(frozen=True)
class MediaResult:
    data: bytes
    header: Header
    sha256: str
    seed: int
    timings: Timings
    request_id: str | None

    def save(self, path: str | Path) -> Path:
        """Writes the file; a folder gets the server's file name."""
        target = Path(path)
        if target.is_dir():
            target = target / self.header.file_name
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class TextResult:
    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    seed: int
    timings: Timings
    request_id: str | None


@dataclass(frozen=True)
class Transcript:
    text: str  # the segments' text, joined
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration_s: float
    timings: Timings
    request_id: str | None


@dataclass(frozen=True)
class PiecesResult:
    """A text stream whose pieces have no dedicated fold: each piece and the final event
    as plain fields (the proto's names, enums by their short names)."""

    text: str  # the pieces' `text` fields, joined by the spec's `join`
    pieces: tuple[dict[str, Any], ...]
    final: dict[str, Any]
    request_id: str | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    modality: str
    state: str
    device: str
    dtype: str
    load_policy: str
    source: str
    detail: str
    engine: str = ""
    is_default: bool = False
    memory_bytes: int = 0
    placement: str = ""


@dataclass(frozen=True)
class Catalog:
    """ListModels: the models, and the limits each modality enforces (by spec name)."""

    models: tuple[ModelInfo, ...]
    limits: dict[str, dict[str, Any]]
    memory_budget_bytes: int


def model_info(m: Any) -> ModelInfo:
    """genserve.v1.ModelInfo -> ModelInfo: the fields both have, by name."""
    return ModelInfo(**{f.name: getattr(m, f.name) for f in fields(ModelInfo)})


def catalog(reply: Any) -> Catalog:
    """ListModelsResponse -> Catalog."""
    return Catalog(
        models=tuple(model_info(m) for m in reply.models),
        limits=limits_from_struct(reply.limits),
        memory_budget_bytes=reply.memory_budget_bytes,
    )
