"""Builds each media pipeline from its manifest entry through from_pretrained, the same
code path for the tiny offline store and for real weights."""

from __future__ import annotations

import logging
from typing import Any

from genserve.server.manifest import ModelSpec
from genserve.server.media.audio import AudioDefaults, BarkBundle
from genserve.server.media.embedding import EmbeddingModel
from genserve.server.media.image import ImageDefaults
from genserve.server.media.mesh import MeshDefaults
from genserve.server.media.pipelines import LoadedPipeline
from genserve.server.media.video import VideoDefaults
from genserve.server.settings import Settings
from genserve.server.worker import SerialWorker

logger = logging.getLogger(__name__)


def _diffusers(pipeline_class: Any, spec: ModelSpec, settings: Settings, **extra: Any) -> Any:
    source = spec.resolved_source(settings.model_store)
    device, dtype = spec.resolved_device(), spec.resolved_dtype()
    logger.info("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    pipeline = pipeline_class.from_pretrained(source, dtype=dtype, **extra).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _worker(spec: ModelSpec, settings: Settings) -> SerialWorker:
    return SerialWorker(f"media-{spec.name}", settings.media.max_queue)


def load_image_pipeline(spec: ModelSpec, settings: Settings) -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline

    pipeline = _diffusers(
        StableDiffusionPipeline,
        spec,
        settings,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return LoadedPipeline(pipeline, _worker(spec, settings), ImageDefaults(**spec.defaults))


def load_video_pipeline(spec: ModelSpec, settings: Settings) -> LoadedPipeline:
    from diffusers import StableVideoDiffusionPipeline

    pipeline = _diffusers(StableVideoDiffusionPipeline, spec, settings)
    return LoadedPipeline(pipeline, _worker(spec, settings), VideoDefaults(**spec.defaults))


def load_mesh_pipeline(spec: ModelSpec, settings: Settings) -> LoadedPipeline:
    from diffusers import ShapEPipeline

    pipeline = _diffusers(ShapEPipeline, spec, settings)
    return LoadedPipeline(pipeline, _worker(spec, settings), MeshDefaults(**spec.defaults))


def load_audio_pipeline(spec: ModelSpec, settings: Settings) -> LoadedPipeline:
    from transformers import BarkModel, BarkProcessor

    source = spec.resolved_source(settings.model_store)
    device, dtype = spec.resolved_device(), spec.resolved_dtype()
    logger.info("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    processor = BarkProcessor.from_pretrained(source)
    # transformers 5 takes no device= in from_pretrained (the seed's listing breaks): .to()
    model = BarkModel.from_pretrained(source, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
    bundle = BarkBundle(processor=processor, model=model)
    return LoadedPipeline(bundle, _worker(spec, settings), AudioDefaults(**spec.defaults))


def load_embedding_model(spec: ModelSpec, settings: Settings) -> EmbeddingModel:
    from sentence_transformers import SentenceTransformer

    source = spec.resolved_source(settings.model_store)
    device = spec.resolved_device()
    logger.info("loading %s from %s on %s", spec.name, source, device)
    return EmbeddingModel(SentenceTransformer(source, device=str(device)), spec.name)
