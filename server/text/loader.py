"""Builds a text engine from a manifest entry, through transformers' from_pretrained.

A GGUF checkpoint is dequantized on load, which costs most of a start (~18 s for
SmolLM2 here); the dequantized model is cached once in the model store as safetensors
and later starts load that copy: the same weights, in about a second.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from genserve.server.manifest import ModelSpec
from genserve.server.settings import Settings
from genserve.server.text.batching_engine import BatchingTextEngine
from genserve.server.text.engine import TextEngine
from genserve.server.text.transformers_engine import SerialTextEngine
from genserve.server.text.weights import prepare_weights

logger = logging.getLogger(__name__)

GGUF_CACHE = "gguf-dequantized"
COMPLETE_MARKER = ".complete"


def load_text_engine(spec: ModelSpec, settings: Settings, *, batching: bool = True) -> TextEngine:
    device = spec.resolved_device()
    dtype = spec.resolved_dtype()
    source, extra = _checkpoint(spec, settings.model_store)
    logger.info("loading text model %s from %s on %s (%s)", spec.name, source, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() oddly
    model = prepare_weights(model, quantization=spec.quantization, cpu_linear=spec.cpu_linear)
    limits = settings.text
    if not batching:
        return SerialTextEngine(model, tokenizer, name=spec.name, max_queue=limits.max_queue)
    return BatchingTextEngine(
        model,
        tokenizer,
        name=spec.name,
        max_queue=limits.max_queue,
        max_batch_size=limits.max_batch_size,
        max_wait_ms=limits.max_wait_ms,
        max_batch_tokens=limits.max_batch_tokens,
        prefill_chunk_tokens=limits.prefill_chunk_tokens,
    )


def load_batching_text_engine(spec: ModelSpec, settings: Settings) -> TextEngine:
    """Engine kind "transformers": continuous batching."""
    return load_text_engine(spec, settings, batching=True)


def load_serial_text_engine(spec: ModelSpec, settings: Settings) -> TextEngine:
    """Engine kind "transformers-serial": one request at a time."""
    return load_text_engine(spec, settings, batching=False)


def load_llama_text_engine(spec: ModelSpec, settings: Settings) -> TextEngine:
    """A GGUF file served by llama.cpp as it is: no dequantized copy."""
    from genserve.server.text.llama_engine import LlamaEngineConfig, load_llama_engine

    if not spec.gguf_file:
        raise ValueError(f"model {spec.name!r}: engine llama.cpp needs gguf_file")
    limits = settings.text
    config = LlamaEngineConfig(
        kv_cache_tokens=limits.kv_cache_tokens,
        max_queue=limits.max_queue,
        prefill_chunk_tokens=limits.prefill_chunk_tokens,
        threads=limits.threads,
        unified=limits.kv_unified,
        max_running=limits.max_batch_size,
    )
    gguf = Path(spec.resolved_source(settings.model_store)) / spec.gguf_file
    return load_llama_engine(gguf, config, name=spec.name)


def _checkpoint(spec: ModelSpec, model_store: Path) -> tuple[str, dict[str, Any]]:
    """Where to load from: the dequantized cache of a GGUF file when there is one."""
    source = spec.resolved_source(model_store)
    if not spec.gguf_file:
        return source, {}
    # Keyed by the file, not the model's name: two entries of one GGUF share one cache.
    cache = model_store / GGUF_CACHE / Path(spec.gguf_file).stem
    if not (cache / COMPLETE_MARKER).exists():
        _dequantize_into(cache, source, spec.gguf_file)
    return str(cache), {}


def _dequantize_into(cache: Path, source: str, gguf_file: str) -> None:
    logger.info("dequantizing %s once into %s", gguf_file, cache)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    # transformers will not save a model loaded from GGUF; a plain copy of it saves fine.
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a concurrent or interrupted start never sees half a cache.
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / COMPLETE_MARKER).touch()
        # another process may have finished first: theirs is as good as ours
        with contextlib.suppress(OSError):
            scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
