"""EmbeddingService: a batch of texts in, unit-length vectors out (unary)."""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from genserve.contract.modalities.embedding import EMBEDDING
from genserve.server.media.embedding import Embeddings
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.servicers.request import RequestConverter, admit_request
from genserve.server.settings import Settings
from genserve.v1 import embedding_pb2, embedding_pb2_grpc


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._registry = registry
        self._convert = RequestConverter(EMBEDDING, registry, settings)

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: ServicerContext[Any, Any]
    ) -> embedding_pb2.EmbedResponse:
        entry, defaults = self._convert.resolve(request)
        params = await self._convert.params(request, defaults)
        admit_request(EMBEDDING, entry, params, context)
        call = current_call_details()
        call.model = entry.name
        async with self._registry.use(entry.modality, entry.name) as engine:
            results: list[Embeddings] = [r async for r in engine.generate(list(params.texts))]
        (result,) = results  # an embedding engine answers once
        call.prompt_tokens = result.prompt_tokens
        return embedding_pb2.EmbedResponse(
            embeddings=[embedding_pb2.Embedding(values=v) for v in result.vectors],
            model=entry.name,
            prompt_tokens=result.prompt_tokens,
        )
