"""Builds a text engine from a manifest entry, through transformers' from_pretrained."""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from server.manifest import ModelSpec
from server.settings import Settings
from server.text.transformers_engine import SerialTextEngine

logger = logging.getLogger(__name__)


def load_text_engine(spec: ModelSpec, settings: Settings) -> SerialTextEngine:
    source = spec.resolved_source(settings.model_store)
    device = spec.resolved_device()
    dtype = spec.resolved_dtype()
    extra: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    logger.info("loading text model %s from %s on %s (%s)", spec.name, source, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() oddly
    return SerialTextEngine(model, tokenizer, name=spec.name, max_queue=settings.text.max_queue)
