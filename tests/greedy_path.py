"""A prompt's greedy path on the tiny profile's llama.cpp model, computed here from its
logits, one request alone: the tokens' text and how close each step came to a tie (the
gap between the two likeliest tokens' logits). Tests that compare a batch's greedy output
with a request's alone rest on there being no near-tie: a batch may sum in another order,
and a last-bit difference flips a tie."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from genserve.contract import Modality
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.text.llama_runtime import (
    MAX_UBATCH_TOKENS,
    BatchToken,
    ContextShape,
    LlamaRuntime,
)
from genserve.server.text.types import ChatTurn


@dataclass(frozen=True)
class GreedyPath:
    text: str
    gaps: list[float]  # per generated token, top-1 minus top-2 logit


def greedy_paths(prompts: list[str], max_new_tokens: int) -> dict[str, GreedyPath]:
    """Each prompt under the tiny profile's default text model and its system prompt."""
    manifest: Manifest = load_manifest(manifest_path("tiny"))
    spec = manifest.spec_for(Modality.TEXT)
    assert spec is not None and spec.gguf_file
    gguf = Path(spec.resolved_source(Path("unused: a package source"))) / spec.gguf_file
    system_prompt = str(spec.defaults["system_prompt"])
    runtime = LlamaRuntime(
        gguf, ContextShape(kv_tokens=1024, max_sequences=1, step_tokens=256, threads=2)
    )
    try:
        return {p: _path(runtime, system_prompt, p, max_new_tokens) for p in prompts}
    finally:
        runtime.close()


def _path(runtime: LlamaRuntime, system_prompt: str, prompt: str, count: int) -> GreedyPath:
    runtime.clear()
    turns = [ChatTurn("system", system_prompt), ChatTurn("user", prompt)]
    tokens = runtime.tokenize(runtime.render_chat(turns))
    for start in range(0, len(tokens), MAX_UBATCH_TOKENS):
        chunk = tokens[start : start + MAX_UBATCH_TOKENS]
        runtime.decode(
            [BatchToken(t, start + i, 0, start + i == len(tokens) - 1) for i, t in enumerate(chunk)]
        )
    position, generated, gaps = len(tokens), bytearray(), []
    for _ in range(count):
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(runtime.context, -1), shape=(runtime.vocabulary_size,)
        )
        second, first = np.argsort(logits)[-2:]
        gaps.append(float(logits[first] - logits[second]))
        if runtime.is_end_of_generation(int(first)):
            break
        generated += runtime.piece(int(first))
        runtime.decode([BatchToken(int(first), position, 0, True)])
        position += 1
    return GreedyPath(generated.decode("utf-8", errors="replace"), gaps)
