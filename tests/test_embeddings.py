"""EmbeddingService on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from genserve.v1 import embedding_pb2, embedding_pb2_grpc


def embed(channel: grpc.Channel, texts: list[str]) -> np.ndarray:
    response = embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
        embedding_pb2.EmbedRequest(texts=texts), timeout=60
    )
    assert response.model == "all-MiniLM-L6-v2"
    assert response.prompt_tokens >= len(texts)
    return np.array([e.values for e in response.embeddings])


def test_vectors_are_normalised(channel: grpc.Channel) -> None:
    vectors = embed(channel, ["FastAPI is a web framework.", "Bonjour"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_paraphrases_are_closer_than_unrelated_sentences(channel: grpc.Channel) -> None:
    a, b, c = embed(
        channel,
        [
            "How do I build a web API in Python?",
            "What is the way to create a Python web service API?",
            "The cat slept on the warm windowsill all afternoon.",
        ],
    )
    assert float(a @ b) > float(a @ c) + 0.2


@pytest.mark.parametrize(
    ("texts", "field"),
    [([], "texts"), (["ok", ""], "texts[1]"), (["x"] * 65, "texts"), (["x" * 9000], "texts[0]")],
)
def test_bad_batches_are_invalid_argument(
    channel: grpc.Channel, texts: list[str], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        embed(channel, texts)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(f"{field}:")
