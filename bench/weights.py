"""CPU weight options for the text model, side by side in one process: fp32 through
aten (stock transformers), fp32 through oneDNN prepacked Linear layers (what the server
runs by default) and dynamic int8. Speed: `generate` tokens/s at batch 1 and one decode
step at batch 1 and 8. Quality: perplexity on a fixed text and the greedy answer's
agreement with stock fp32."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from bench.text_throughput import chat_ids, greedy, load_text_model

PERPLEXITY_TEXT = Path(__file__).parent / "data" / "perplexity.txt"
VARIANTS: dict[str, dict[str, str]] = {
    "fp32, aten (stock)": {"quantization": "none", "cpu_linear": "aten"},
    "fp32, oneDNN (served)": {"quantization": "none", "cpu_linear": "onednn"},
    "int8 dynamic": {"quantization": "int8_dynamic", "cpu_linear": "aten"},
}


def decode_step_ms(model: Any, batch: int, context: int = 64, steps: int = 8) -> float:
    """One decode step for `batch` rows over a `context`-token cache, median of `steps`."""
    times = []
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=torch.zeros((batch, context), dtype=torch.long), past_key_values=cache)
        for _ in range(steps + 1):
            started = time.perf_counter()
            model(input_ids=torch.zeros((batch, 1), dtype=torch.long), past_key_values=cache)
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1000


def perplexity(model: Any, tokenizer: Any, max_tokens: int = 512) -> float:
    ids = tokenizer(PERPLEXITY_TEXT.read_text(), return_tensors="pt").input_ids[:, :max_tokens]
    with torch.inference_mode():
        return math.exp(float(model(input_ids=ids, labels=ids).loss))


def _agreement(a: list[int], b: list[int]) -> int:
    """Tokens identical before the first difference."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def compare(max_new_tokens: int, repeats: int) -> list[dict[str, Any]]:
    models = {name: load_text_model(**options) for name, options in VARIANTS.items()}
    tokenizer = next(iter(models.values()))[0]
    ids = chat_ids(tokenizer)
    rates: dict[str, list[float]] = {name: [] for name in models}
    answers: dict[str, list[int]] = {}
    steps: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in models}
    for _ in range(repeats):  # alternated, so every variant sees the same machine load
        for name, (_, model) in models.items():
            started = time.perf_counter()
            answers[name] = greedy(model, ids, max_new_tokens)
            rates[name].append(max_new_tokens / (time.perf_counter() - started))
            for batch, samples in steps[name].items():
                samples.append(decode_step_ms(model, batch))
    reference = answers[next(iter(models))]
    median: Callable[[list[float]], float] = statistics.median
    return [
        {
            "weights": name,
            "generate_tokens_per_s": round(median(rates[name]), 2),
            "decode_step_ms_batch_1": round(median(steps[name][1]), 1),
            "decode_step_ms_batch_8": round(median(steps[name][8]), 1),
            "perplexity": round(perplexity(model, tokenizer), 3),
            "greedy_tokens_identical_to_stock": _agreement(reference, answers[name]),
            "of_tokens": max_new_tokens,
        }
        for name, (_, model) in models.items()
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| weights | generate tokens/s (batch 1) | decode step ms, batch 1 / 8 | perplexity "
        "| greedy tokens identical to stock fp32 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['weights']} | {row['generate_tokens_per_s']} | "
            f"{row['decode_step_ms_batch_1']} / {row['decode_step_ms_batch_8']} | "
            f"{row['perplexity']} | "
            f"{row['greedy_tokens_identical_to_stock']} of {row['of_tokens']} |"
        )
    return "\n".join(lines)
