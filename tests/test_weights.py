"""The CPU weight options: oneDNN prepacked Linear layers compute what nn.Linear does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.text_throughput import chat_ids, load_text_model
from genserve.server.text.weights import OneDnnLinear, onednn_available, use_onednn_linears

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (3, 5, 96)])
def test_onednn_linear_matches_nn_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias)
    inputs = torch.randn(shape)
    with torch.inference_mode():
        expected = linear(inputs)
        got = OneDnnLinear(linear)(inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_swapping_leaves_no_linear_and_keeps_the_text_model_s_answer() -> None:
    tokenizer, stock = load_text_model(cpu_linear="aten")
    _, packed = load_text_model(cpu_linear="onednn")
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    assert sum(isinstance(m, OneDnnLinear) for m in packed.modules()) == 30 * 7 + 1
    ids = chat_ids(tokenizer)
    with torch.inference_mode():
        expected = stock(**ids).logits
        got = packed(**ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    assert torch.equal(got[0, -1].argmax(), expected[0, -1].argmax())


def test_swapping_twice_is_harmless() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    use_onednn_linears(use_onednn_linears(model))
    assert [type(m).__name__ for m in model] == ["OneDnnLinear", "ReLU", "OneDnnLinear"]
