"""What the SDK returns: plain dataclasses, no protobuf."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from genserve.client.errors import IntegrityError


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    stage: str


@dataclass(frozen=True)
class MediaHeader:
    mime_type: str
    file_name: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    duration_s: float = 0.0
    num_frames: int = 0
    fps: float = 0.0
    vertex_count: int = 0
    face_count: int = 0


@dataclass(frozen=True)
class Timings:
    queued_ms: float
    inference_ms: float
    encoding_ms: float
    replica: str = ""  # the Ray Serve replica that ran it (ray-placed models)


@dataclass(frozen=True)
class MediaResult:
    data: bytes
    header: MediaHeader
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
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seed: int
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


def model_info(m: Any) -> ModelInfo:
    """genserve.v1.ModelInfo -> ModelInfo."""
    return ModelInfo(
        m.name,
        m.modality,
        m.state,
        m.device,
        m.dtype,
        m.load_policy,
        m.source,
        m.detail,
        engine=m.engine,
        is_default=m.is_default,
        memory_bytes=m.memory_bytes,
    )


def model_infos(reply: Any) -> list[ModelInfo]:
    """ListModelsResponse -> ModelInfo list."""
    return [model_info(m) for m in reply.models]


def text_result(pieces: list[str], final: Any, request_id: str) -> TextResult:
    """The deltas and the TextFinal of a stream -> TextResult."""
    from genserve.client.requests import FINISH_REASONS

    return TextResult(
        text="".join(pieces),
        finish_reason=FINISH_REASONS.get(final.finish_reason, "stop"),
        prompt_tokens=final.usage.prompt_tokens,
        completion_tokens=final.usage.completion_tokens,
        seed=final.seed,
        request_id=request_id,
    )


@dataclass
class MediaAssembler:
    """Folds a stream of MediaEvent messages into a MediaResult, checking the sha256."""

    request_id: str | None
    on_progress: Any = None
    _chunks: list[bytes] = field(default_factory=list)
    _header: MediaHeader | None = None
    result: MediaResult | None = None

    def feed(self, event: Any) -> None:
        kind = event.WhichOneof("event")
        if kind == "chunk":
            self._chunks.append(event.chunk.data)
        elif kind == "progress":
            if self.on_progress is not None:
                p = event.progress
                self.on_progress(Progress(p.step, p.total_steps, p.stage))
        elif kind == "header":
            h = event.header
            self._header = MediaHeader(
                mime_type=h.mime_type,
                file_name=h.file_name,
                width=h.width,
                height=h.height,
                sample_rate=h.sample_rate,
                duration_s=h.duration_s,
                num_frames=h.num_frames,
                fps=h.fps,
                vertex_count=h.vertex_count,
                face_count=h.face_count,
            )
        elif kind == "final":
            self.result = self._finish(event.final)

    def _finish(self, final: Any) -> MediaResult:
        data = b"".join(self._chunks)
        digest = hashlib.sha256(data).hexdigest()
        if digest != final.sha256 or len(data) != final.total_bytes:
            raise IntegrityError(
                grpc.StatusCode.DATA_LOSS,
                f"received {len(data)} bytes with sha256 {digest}; the server sent "
                f"{final.total_bytes} bytes with sha256 {final.sha256}",
                self.request_id,
            )
        assert self._header is not None, "a media stream has a header before its data"
        header = self._header
        if final.vertex_count or final.face_count:  # known only at the end (mesh)
            header = replace(header, vertex_count=final.vertex_count, face_count=final.face_count)
        t = final.timings
        return MediaResult(
            data=data,
            header=header,
            sha256=digest,
            seed=final.seed,
            timings=Timings(t.queued_ms, t.inference_ms, t.encoding_ms, t.replica),
            request_id=self.request_id,
        )
