"""Perplexity of the same GGUF through llama.cpp (as our engine runs it) and through
transformers (dequantized to fp32), on the same token ids of the bench text."""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import llama_cpp
import numpy as np
import torch

from bench.weights import PERPLEXITY_TEXT
from genserve.server.text.llama_runtime import BatchToken, ContextShape, LlamaRuntime

MAX_TOKENS = 512


def _nll(logits: np.ndarray, targets: list[int]) -> float:
    """Mean negative log-likelihood of `targets` under rows of `logits`."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def llama_cpp_perplexity(gguf: Path) -> tuple[float, list[int]]:
    """Perplexity through llama.cpp, and the token ids it read (llama.cpp's tokenizer)."""
    shape = ContextShape(kv_tokens=1024, max_sequences=1, step_tokens=MAX_TOKENS, threads=2)
    runtime = LlamaRuntime(gguf, shape)
    try:
        ids = runtime.tokenize(PERPLEXITY_TEXT.read_text())[:MAX_TOKENS]
        runtime.decode([BatchToken(t, i, 0, True) for i, t in enumerate(ids)])
        vocab = runtime.vocabulary_size
        pointer = llama_cpp.llama_get_logits(runtime.context)
        rows = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(len(ids), vocab)
        )
        return math.exp(_nll(rows[:-1].astype(np.float64), ids[1:])), ids
    finally:
        runtime.close()


def transformers_perplexity(model: torch.nn.Module, ids: list[int]) -> float:
    with torch.inference_mode():
        tensor = torch.tensor([ids])
        return math.exp(float(model(input_ids=tensor, labels=tensor).loss))
