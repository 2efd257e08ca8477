"""Sentence embeddings: a batch of texts in, unit-length vectors out (unary)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.limits import EmbeddingLimits
from genserve.contract.modalities.text import CHARS_PER_TOKEN
from genserve.contract.spec import NOT_BLANK, Cost, Interaction, ModalitySpec
from genserve.v1 import embedding_pb2


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    texts: list[str] = Field(description="the texts to embed, one vector each")


def embedding_bounds(limits: EmbeddingLimits) -> dict[str, dict[str, Any]]:
    return {
        "texts": {
            "min_length": 1,
            "max_length": limits.max_texts,
            "items": {"max_length": limits.max_text_chars, "pattern": NOT_BLANK},
        }
    }


def embedding_cost(params: EmbedParams) -> Cost:
    return Cost(sum(len(t) for t in params.texts) / CHARS_PER_TOKEN, "text characters / 4")


EMBEDDING = ModalitySpec(
    name="embedding",
    aliases=("embeddings", "embed"),
    description="sentence embeddings, normalised to unit length",
    proto_module=embedding_pb2,
    service_name="EmbeddingService",
    method="Embed",
    request_type=embedding_pb2.EmbedRequest,
    interaction=Interaction.UNARY,
    params_type=EmbedParams,
    limits_type=EmbeddingLimits,
    settings_sections=("embedding",),
    bounds=embedding_bounds,
    cost=embedding_cost,
    mime_types=("application/json",),
    http_path="/embed",
    sdk_timeout_s=60.0,
    engines={
        "sentence-transformers": "genserve.server.media.loaders:load_embedding_engine",
        "upstream": "genserve.server.upstream.loader:load_embedding_upstream",
    },
    default_engine="sentence-transformers",
    servicer="genserve.server.servicers.embedding:EmbeddingServicer",
    example=lambda: {"texts": ["FastAPI is a web framework", "gRPC streams"]},
)
