"""CPU weight options for a loaded text model, chosen per manifest entry.

- `cpu_linear = "onednn"` (default on CPU fp32): every Linear layer keeps its weights
  prepacked in oneDNN's blocked layout and runs through oneDNN's matmul, the path
  PyTorch's own compiler (inductor) takes on CPU. Same fp32 weights and arithmetic
  (outputs agree with aten to ~1e-5). On this 2-core EPYC (AVX2, no AVX-512) aten's
  BLAS path reads weights at about half the speed and slows down sharply from 1 to 2+
  rows, while oneDNN stays nearly flat up to 8 rows, which is where batching pays.
- `quantization = "int8_dynamic"`: torch dynamic int8 Linear layers; faster, but on
  SmolLM2 it multiplies perplexity several times (`make bench` reports both).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# The batch size oneDNN tunes the packed layout for; it serves other sizes as well.
PACKING_BATCH_HINT = 8


class OneDnnLinear(nn.Module):
    """A Linear layer whose weight lives prepacked for oneDNN (fp32, CPU, inference)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Plain attributes, not parameters: the packed tensor is opaque to state_dict.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach(), PACKING_BATCH_HINT
        )
        self.bias_data = None if linear.bias is None else linear.bias.detach()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            inputs, self.packed, self.bias_data, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def use_onednn_linears(model: Any) -> Any:
    """Swaps every fp32 CPU nn.Linear for a OneDnnLinear, in place; returns the model."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Linear)
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
            ):
                setattr(parent, name, OneDnnLinear(child))
                swapped += 1
    logger.info("%d Linear layers run on oneDNN prepacked weights", swapped)
    return model


def quantize_int8_dynamic(model: Any) -> Any:
    """int8 weights for every Linear layer, activations quantized on the fly (CPU only):
    a quarter of fp32's bytes to read per token, at some cost in quality."""
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def prepare_weights(model: Any, *, quantization: str, cpu_linear: str) -> Any:
    """Applies the manifest's weight options to a model already on its device."""
    if quantization == "int8_dynamic":
        return quantize_int8_dynamic(model)
    if cpu_linear == "onednn":
        if onednn_available():
            return use_onednn_linears(model)
        logger.warning("oneDNN is not available in this torch build; Linear layers stay aten")
    return model
