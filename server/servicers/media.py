"""What the four media servicers share: running a job on the pipeline's worker and
turning the plain events into genserve.v1.MediaEvent messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from pydantic import BaseModel

from genserve.v1 import common_pb2
from genserve.server.manifest import Modality
from genserve.server.media.events import Chunk, Final, Header, MediaEvent, Progress
from genserve.server.media.pipelines import LoadedPipeline
from genserve.server.media.run import MediaRun
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details

P = TypeVar("P")
D = TypeVar("D", bound=BaseModel)
GenerateFunction = Callable[[Any, P, MediaRun], None]


def defaults_for(registry: ModelRegistry, modality: Modality, model: type[D]) -> D:
    """The manifest's request defaults for a modality, known before its model loads."""
    spec = registry.slot(modality).spec
    return model(**spec.defaults) if spec is not None else model()


class MediaStreamer:
    def __init__(self, registry: ModelRegistry, modality: Modality, chunk_size: int) -> None:
        self._registry = registry
        self._modality = modality
        self._chunk_size = chunk_size

    async def stream(
        self, generate: GenerateFunction[P], params: P, seed: int
    ) -> AsyncIterator[common_pb2.MediaEvent]:
        call = current_call_details()
        loaded: LoadedPipeline
        async with self._registry.use(self._modality) as loaded:
            job_events = loaded.worker.run(
                lambda job: generate(loaded.pipeline, params, MediaRun(job, self._chunk_size, seed))
            )
            async with aclosing(job_events) as events:
                async for event in events:
                    if isinstance(event, Final):
                        call.queued_ms = event.queued_ms
                        call.inference_ms = event.inference_ms
                        call.encoding_ms = event.encoding_ms
                    yield media_event_to_pb(event)


def media_event_to_pb(event: MediaEvent) -> common_pb2.MediaEvent:
    if isinstance(event, Chunk):
        return common_pb2.MediaEvent(
            chunk=common_pb2.DataChunk(data=event.data, offset=event.offset)
        )
    if isinstance(event, Progress):
        return common_pb2.MediaEvent(
            progress=common_pb2.Progress(
                step=event.step, total_steps=event.total_steps, stage=event.stage
            )
        )
    if isinstance(event, Header):
        return common_pb2.MediaEvent(
            header=common_pb2.MediaHeader(
                mime_type=event.mime_type,
                file_name=event.file_name,
                width=event.width,
                height=event.height,
                sample_rate=event.sample_rate,
                duration_s=event.duration_s,
                num_frames=event.num_frames,
                fps=event.fps,
                vertex_count=event.vertex_count,
                face_count=event.face_count,
            )
        )
    return common_pb2.MediaEvent(
        final=common_pb2.MediaFinal(
            total_bytes=event.total_bytes,
            sha256=event.sha256,
            timings=common_pb2.Timings(
                queued_ms=event.queued_ms,
                inference_ms=event.inference_ms,
                encoding_ms=event.encoding_ms,
            ),
            seed=event.seed,
        )
    )
