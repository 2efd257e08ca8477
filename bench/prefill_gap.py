"""What a long prompt joining a running batch does to the running stream: its inter-token
gaps, with chunked prefill off (the whole prompt in one forward) and at a few chunk sizes,
side by side in one run, on the real SmolLM2 model and BatchingTextEngine (no server).

python -m bench.prefill_gap                          # 3-5 minutes on 2 CPU cores
python -m bench.prefill_gap --prompt-tokens 3000 --chunks 256 --rounds 1

Per setting: a greedy stream of --running-tokens starts alone; once it has streamed a few
tokens, a --prompt-tokens prompt joins (greedy, 8 new tokens). Recorded: the running
stream's gaps between deltas (p50, p99, max), the long request's time to first token, and
the time from the long request's arrival until both are done: the same work under every
setting, so its ratio to "off" is chunking's cost in aggregate throughput. Settings
alternate within each round (the machine is shared); each figure is the median of rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.text_throughput import load_text_model, percentile, text_spec
from genserve.server.text.batching_engine import BatchingTextEngine
from genserve.server.text.token_stream import encode_chat
from genserve.server.text.types import ChatTurn, SamplingParams, TextDelta, TextRequest

WHOLE = 10**9  # a chunk no prompt fills: chunked prefill off
RUNNING_PROMPT = "Write a long, detailed essay on the history of the Python programming language."
LONG_DOCUMENT = Path(__file__).parent / "data/perplexity.txt"
LONG_NEW_TOKENS = 8
# Deltas the running stream has sent before the long prompt arrives (it is decoding).
LEAD_DELTAS = 10


@dataclass
class Run:
    gaps_s: list[float]  # the running stream's, between consecutive deltas
    running_tokens: int
    ttft_s: float  # the long request's, from its arrival
    both_done_s: float  # from the long request's arrival until both streams have ended


@dataclass
class Row:
    setting: str
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    ttft_s: float
    both_done_s: float


def greedy(prompt: str, max_new_tokens: int) -> TextRequest:
    params = SamplingParams(
        max_new_tokens=max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=0
    )
    return TextRequest(messages=(ChatTurn("user", prompt),), params=params)


def long_request(tokenizer: Any, tokens: int) -> TextRequest:
    """A prompt of about `tokens` tokens: the sample document, repeated and cut."""
    text = LONG_DOCUMENT.read_text()
    ids: list[int] = []
    while len(ids) < tokens:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    overhead = len(encode_chat(tokenizer, greedy("", LONG_NEW_TOKENS)))
    return greedy(tokenizer.decode(ids[: tokens - overhead]), LONG_NEW_TOKENS)


def engine_for(model: Any, tokenizer: Any, chunk: int) -> BatchingTextEngine:
    return BatchingTextEngine(
        model,
        tokenizer,
        name="prefill-gap",
        max_queue=8,
        max_batch_size=8,
        max_wait_ms=0,
        max_batch_tokens=32768,
        prefill_chunk_tokens=chunk,
    )


async def collect(engine: BatchingTextEngine, request: TextRequest, times: list[float]) -> int:
    """Streams one request, appending each delta's arrival time; its completion tokens."""
    tokens = 0
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            times.append(time.perf_counter())
            tokens = event.completion_tokens
        else:
            tokens = event.completion_tokens
    return tokens


async def measure(engine: BatchingTextEngine, running: TextRequest, long: TextRequest) -> Run:
    running_times: list[float] = []
    stream = asyncio.create_task(collect(engine, running, running_times))
    while len(running_times) < LEAD_DELTAS and not stream.done():
        await asyncio.sleep(0.002)
    long_times: list[float] = []
    submitted = time.perf_counter()
    await collect(engine, long, long_times)
    tokens = await stream
    return Run(
        gaps_s=[b - a for a, b in itertools.pairwise(running_times)],
        running_tokens=tokens,
        ttft_s=long_times[0] - submitted,
        both_done_s=time.perf_counter() - submitted,
    )


def run_once(
    model: Any, tokenizer: Any, chunk: int, running: TextRequest, long: TextRequest
) -> Run:
    engine = engine_for(model, tokenizer, chunk)
    try:
        return asyncio.run(measure(engine, running, long))
    finally:
        engine.close()


def warm_up(model: Any, tokenizer: Any) -> None:
    """First passes pay for lazy kernel setup; a short stream and a 512-token prompt."""
    engine = engine_for(model, tokenizer, WHOLE)

    async def both() -> None:
        await collect(engine, greedy(RUNNING_PROMPT, 4), [])
        await collect(engine, long_request(tokenizer, 512), [])

    try:
        asyncio.run(both())
    finally:
        engine.close()


def summarize(setting: str, runs: list[Run]) -> Row:
    def median_of(value: Any) -> float:
        return statistics.median(value(r) for r in runs)

    return Row(
        setting=setting,
        gap_p50_ms=median_of(lambda r: percentile(r.gaps_s, 0.5) * 1000),
        gap_p99_ms=median_of(lambda r: percentile(r.gaps_s, 0.99) * 1000),
        gap_max_ms=median_of(lambda r: max(r.gaps_s) * 1000),
        ttft_s=median_of(lambda r: r.ttft_s),
        both_done_s=median_of(lambda r: r.both_done_s),
    )


def table(rows: list[Row]) -> str:
    off = rows[0]
    lines = [
        "| prefill | gap p50 ms | gap p99 ms | gap max ms | max gap vs off "
        "| long TTFT s | TTFT vs off | both done s | vs off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.setting} | {row.gap_p50_ms:.0f} | {row.gap_p99_ms:.0f} "
            f"| {row.gap_max_ms:.0f} | {row.gap_max_ms / off.gap_max_ms:.3f} "
            f"| {row.ttft_s:.2f} | {row.ttft_s / off.ttft_s:.2f} "
            f"| {row.both_done_s:.1f} | {row.both_done_s / off.both_done_s:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    parser.add_argument("--running-tokens", type=int, default=120)
    parser.add_argument("--chunks", default="128,256,512", help="comma-separated chunk sizes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]

    spec = text_spec()
    tokenizer, model = load_text_model(spec.quantization, spec.cpu_linear)
    running = greedy(RUNNING_PROMPT, args.running_tokens)
    long = long_request(tokenizer, args.prompt_tokens)
    prompt_tokens = len(encode_chat(tokenizer, long))
    warm_up(model, tokenizer)
    settings = [WHOLE, *chunks]
    runs: dict[int, list[Run]] = {chunk: [] for chunk in settings}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for chunk in settings:
            runs[chunk].append(run_once(model, tokenizer, chunk, running, long))
    rows = [summarize("off" if c == WHOLE else f"chunk {c}", runs[c]) for c in settings]
    streamed = sorted({r.running_tokens for rs in runs.values() for r in rs})
    print(
        f"SmolLM2-135M ({spec.cpu_linear} Linear), {torch.get_num_threads()} torch threads: "
        f"a {prompt_tokens}-token prompt joins a greedy stream ({streamed} tokens) after "
        f"its {LEAD_DELTAS}th delta; median of {args.rounds} round(s), "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
