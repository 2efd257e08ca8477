"""Sentence embeddings with sentence-transformers (all-MiniLM-L6-v2 in the tiny profile)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


def embed(model: Any, texts: list[str]) -> Embeddings:
    """Unit-length vectors for the texts; `model` is a SentenceTransformer."""
    tokens = model.tokenizer(texts, padding=True, truncation=True)
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return Embeddings(
        vectors=vectors.astype(float).tolist(),
        prompt_tokens=sum(sum(mask) for mask in tokens["attention_mask"]),
    )
