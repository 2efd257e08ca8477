"""Builds an upstream model's engine: the adapter for its kind and modality, one pooled
client, and the first reachability probe (so health is right from the start)."""

from __future__ import annotations

import logging
from typing import Any

from genserve.server.manifest import Modality, ModelSpec
from genserve.server.settings import Settings
from genserve.server.upstream import bentoml, openai
from genserve.server.upstream.engine import Adapter, UpstreamEngine
from genserve.server.upstream.http import UpstreamHttp

logger = logging.getLogger(__name__)


def _adapter(kind: str, modality: Modality, settings: Settings) -> Adapter[Any, Any] | None:
    adapters: dict[tuple[str, Modality], Adapter[Any, Any]] = {
        ("openai", Modality.TEXT): openai.chat,
        ("openai", Modality.EMBEDDING): openai.embeddings,
        ("openai", Modality.IMAGE): openai.image_adapter(settings),
        ("openai", Modality.AUDIO): openai.speech_adapter(settings),
        ("bentoml", Modality.TEXT): bentoml.text,
        ("bentoml", Modality.IMAGE): bentoml.image_adapter(settings),
    }
    return adapters.get((kind, modality))


HEALTH_PATHS = {"openai": openai.HEALTH_PATH, "bentoml": bentoml.HEALTH_PATH}


def load_upstream_engine(
    modality: Modality, spec: ModelSpec, settings: Settings
) -> UpstreamEngine[Any, Any]:
    upstream = spec.upstream
    if upstream is None:
        raise ValueError(f'model {spec.name}: engine = "upstream" needs an [upstream] table')
    adapter = _adapter(upstream.kind, modality, settings)
    if adapter is None:
        raise ValueError(f"model {spec.name}: a {upstream.kind} upstream serves no {modality}")
    http = UpstreamHttp(spec.name, upstream, upstream.api_key())
    engine = UpstreamEngine(spec.name, http, adapter, HEALTH_PATHS[upstream.kind])
    engine.mark_reachable(http.problem_now(engine.health_path))
    logger.info(
        "model %s: %s upstream at %s, %s",
        spec.name,
        upstream.kind,
        upstream.base_url,
        "reachable" if engine.ready else "NOT reachable (health follows it)",
    )
    return engine


# The engine kind "upstream" of each modality an upstream can serve (the specs' tables).
def load_text_upstream(spec: ModelSpec, settings: Settings) -> UpstreamEngine[Any, Any]:
    return load_upstream_engine(Modality.TEXT, spec, settings)


def load_embedding_upstream(spec: ModelSpec, settings: Settings) -> UpstreamEngine[Any, Any]:
    return load_upstream_engine(Modality.EMBEDDING, spec, settings)


def load_image_upstream(spec: ModelSpec, settings: Settings) -> UpstreamEngine[Any, Any]:
    return load_upstream_engine(Modality.IMAGE, spec, settings)


def load_audio_upstream(spec: ModelSpec, settings: Settings) -> UpstreamEngine[Any, Any]:
    return load_upstream_engine(Modality.AUDIO, spec, settings)
