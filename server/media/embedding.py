"""Sentence embeddings with sentence-transformers (all-MiniLM-L6-v2 in the tiny profile)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class EmbeddingModel:
    model: Any  # sentence_transformers.SentenceTransformer
    name: str
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def embed(self, texts: list[str]) -> Embeddings:
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> Embeddings:
        with self._lock:  # one batch at a time: the model is small, batches are the parallelism
            tokens = self.model.tokenizer(texts, padding=True, truncation=True)
            vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return Embeddings(
            vectors=vectors.astype(float).tolist(),
            prompt_tokens=sum(sum(mask) for mask in tokens["attention_mask"]),
        )

    def close(self) -> None:
        pass
