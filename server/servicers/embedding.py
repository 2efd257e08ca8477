"""EmbeddingService: a batch of texts in, unit-length vectors out (unary)."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from genserve.server.errors import InvalidArgument
from genserve.server.manifest import Modality
from genserve.server.media.embedding import Embeddings
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.servicers.media import requested_model
from genserve.server.settings import EmbeddingLimits
from genserve.v1 import embedding_pb2, embedding_pb2_grpc


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: EmbeddingLimits) -> None:
        self._registry = registry
        self._limits = limits

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: ServicerContext[Any, Any]
    ) -> embedding_pb2.EmbedResponse:
        name = self._registry.resolve(Modality.EMBEDDING, requested_model(request)).name
        texts = check_texts(list(request.texts), self._limits)
        call = current_call_details()
        call.model = name
        async with self._registry.use(Modality.EMBEDDING, name) as engine:
            results: list[Embeddings] = [r async for r in engine.generate(texts)]
        (result,) = results  # an embedding engine answers once
        call.prompt_tokens = result.prompt_tokens
        return embedding_pb2.EmbedResponse(
            embeddings=[embedding_pb2.Embedding(values=v) for v in result.vectors],
            model=name,
            prompt_tokens=result.prompt_tokens,
        )


def check_texts(texts: list[str], limits: EmbeddingLimits) -> list[str]:
    if not texts:
        raise InvalidArgument("texts", "must hold at least one text")
    if len(texts) > limits.max_texts:
        raise InvalidArgument("texts", f"at most {limits.max_texts} texts, got {len(texts)}")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"texts[{i}]", "must not be empty")
        if len(text) > limits.max_text_chars:
            raise InvalidArgument(
                f"texts[{i}]", f"{len(text)} characters exceed the limit of {limits.max_text_chars}"
            )
    return texts
