"""Plain Python media events; servicers turn them into genserve.v1.MediaEvent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Header:
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
class Progress:
    step: int
    total_steps: int
    stage: str


@dataclass(frozen=True)
class Chunk:
    data: bytes
    offset: int


@dataclass(frozen=True)
class Final:
    total_bytes: int
    sha256: str
    queued_ms: float
    inference_ms: float
    encoding_ms: float
    seed: int
    vertex_count: int = 0  # mesh: known only once the file is made
    face_count: int = 0
    replica: str = ""  # the Ray Serve replica that made it (placement = "ray")


MediaEvent = Header | Progress | Chunk | Final
