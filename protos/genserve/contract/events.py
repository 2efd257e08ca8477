"""Plain media events, and their one conversion to and from genserve.v1.MediaEvent.

Engines yield these; the server sends them as protobuf; the SDK and the bridge read them
back into the same classes. A media stream is, in order: one Header, zero or more
Progress, one or more Chunk, one Final (common.proto).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from genserve.v1 import common_pb2


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
class Timings:
    queued_ms: float = 0.0
    inference_ms: float = 0.0
    encoding_ms: float = 0.0
    replica: str = ""  # the Ray Serve replica that ran it; empty in process


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

    @property
    def timings(self) -> Timings:
        return Timings(self.queued_ms, self.inference_ms, self.encoding_ms, self.replica)


MediaEvent = Header | Progress | Chunk | Final


def timings_to_pb(timings: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(**asdict(timings))


def timings_from_pb(timings: common_pb2.Timings) -> Timings:
    return Timings(timings.queued_ms, timings.inference_ms, timings.encoding_ms, timings.replica)


def media_event_to_pb(event: MediaEvent) -> common_pb2.MediaEvent:
    if isinstance(event, Chunk):
        return common_pb2.MediaEvent(
            chunk=common_pb2.DataChunk(data=event.data, offset=event.offset)
        )
    if isinstance(event, Progress):
        return common_pb2.MediaEvent(progress=common_pb2.Progress(**asdict(event)))
    if isinstance(event, Header):
        return common_pb2.MediaEvent(header=common_pb2.MediaHeader(**asdict(event)))
    return common_pb2.MediaEvent(
        final=common_pb2.MediaFinal(
            total_bytes=event.total_bytes,
            sha256=event.sha256,
            timings=timings_to_pb(event.timings),
            seed=event.seed,
            vertex_count=event.vertex_count,
            face_count=event.face_count,
        )
    )


def media_event_from_pb(event: common_pb2.MediaEvent) -> MediaEvent:
    kind = event.WhichOneof("event")
    if kind == "chunk":
        return Chunk(event.chunk.data, event.chunk.offset)
    if kind == "progress":
        return Progress(event.progress.step, event.progress.total_steps, event.progress.stage)
    if kind == "header":
        return Header(**{f.name: getattr(event.header, f.name) for f in fields(Header)})
    if kind == "final":
        final = event.final
        return Final(
            total_bytes=final.total_bytes,
            sha256=final.sha256,
            queued_ms=final.timings.queued_ms,
            inference_ms=final.timings.inference_ms,
            encoding_ms=final.timings.encoding_ms,
            seed=final.seed,
            vertex_count=final.vertex_count,
            face_count=final.face_count,
            replica=final.timings.replica,
        )
    raise ValueError(f"a media event with no event set ({kind!r})")
