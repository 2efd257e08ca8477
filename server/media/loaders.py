"""Builds each media engine from its manifest entry: the pipeline through
from_pretrained (the same code path for the tiny offline store and for real weights),
run by a SerialEngine (pipelines are not re-entrant: diffusers schedulers keep per-call
state)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeAlias

from genserve.contract.events import MediaEvent
from genserve.server.engine.contract import Engine, module_bytes
from genserve.server.engine.serial import Job, SerialEngine
from genserve.server.manifest import ModelSpec
from genserve.server.media.audio import BarkBundle, generate_audio
from genserve.server.media.embedding import embed
from genserve.server.media.image import generate_image
from genserve.server.media.mesh import generate_mesh
from genserve.server.media.run import MediaRun
from genserve.server.media.video import generate_video
from genserve.server.settings import Settings

MediaEngine: TypeAlias = SerialEngine[Any, MediaEvent]

logger = logging.getLogger(__name__)

GenerateFunction = Callable[[Any, Any, MediaRun], None]


def _diffusers(pipeline_class: Any, spec: ModelSpec, settings: Settings, **extra: Any) -> Any:
    source = spec.resolved_source(settings.model_store)
    device, dtype = spec.resolved_device(), spec.resolved_dtype()
    logger.info("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    pipeline = pipeline_class.from_pretrained(source, dtype=dtype, **extra).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _media_engine(
    spec: ModelSpec, settings: Settings, pipeline: Any, generate: GenerateFunction
) -> MediaEngine:
    chunk_size = settings.media.chunk_size

    def work(params: Any, job: Job[MediaEvent]) -> None:
        generate(pipeline, params, MediaRun(job, chunk_size, params.seed))

    return SerialEngine(
        spec.name,
        work,
        max_queue=settings.media.max_queue,
        memory_bytes=module_bytes(pipeline),
    )


def _image_pipeline(spec: ModelSpec, settings: Settings) -> Any:
    from diffusers import StableDiffusionPipeline

    return _diffusers(
        StableDiffusionPipeline,
        spec,
        settings,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_image_engine(spec: ModelSpec, settings: Settings) -> MediaEngine:
    """One request at a time through the pipeline's own call."""
    return _media_engine(spec, settings, _image_pipeline(spec, settings), generate_image)


def load_batching_image_engine(spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
    """Concurrent requests of one shape share the UNet's batch dimension; a UNet the
    batched loop cannot drive (guidance-embedding LCM) runs one request at a time."""
    from genserve.server.media.image_batching import BatchingImageEngine
    from genserve.server.media.image_denoise import Denoiser

    pipeline = _image_pipeline(spec, settings)
    try:
        denoiser = Denoiser(pipeline)
    except ValueError as exc:
        logger.warning("%s is served unbatched: %s", spec.name, exc)
        return _media_engine(spec, settings, pipeline, generate_image)
    return BatchingImageEngine(
        spec.name,
        denoiser,
        chunk_size=settings.media.chunk_size,
        max_queue=settings.media.max_queue,
        memory_bytes=module_bytes(pipeline),
    )


def load_video_engine(spec: ModelSpec, settings: Settings) -> MediaEngine:
    from diffusers import StableVideoDiffusionPipeline

    pipeline = _diffusers(StableVideoDiffusionPipeline, spec, settings)
    return _media_engine(spec, settings, pipeline, generate_video)


def load_mesh_engine(spec: ModelSpec, settings: Settings) -> MediaEngine:
    from diffusers import ShapEPipeline

    pipeline = _diffusers(ShapEPipeline, spec, settings)
    return _media_engine(spec, settings, pipeline, generate_mesh)


def load_audio_engine(spec: ModelSpec, settings: Settings) -> MediaEngine:
    from transformers import BarkModel, BarkProcessor

    source = spec.resolved_source(settings.model_store)
    device, dtype = spec.resolved_device(), spec.resolved_dtype()
    logger.info("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    processor = BarkProcessor.from_pretrained(source)
    # transformers 5 takes no device= in from_pretrained: the model moves with .to()
    model = BarkModel.from_pretrained(source, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
    bundle = BarkBundle(processor=processor, model=model)
    return _media_engine(spec, settings, bundle, generate_audio)


def load_embedding_engine(spec: ModelSpec, settings: Settings) -> SerialEngine[Any, Any]:
    from sentence_transformers import SentenceTransformer

    source = spec.resolved_source(settings.model_store)
    device = spec.resolved_device()
    logger.info("loading %s from %s on %s", spec.name, source, device)
    model = SentenceTransformer(source, device=str(device))

    # One batch at a time on the model thread: the batch is the parallelism.
    def work(texts: list[str], job: Job[Any]) -> None:
        job.emit(embed(model, texts))

    return SerialEngine(
        spec.name, work, max_queue=settings.embedding.max_queue, memory_bytes=module_bytes(model)
    )
