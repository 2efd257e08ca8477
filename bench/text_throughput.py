"""Text throughput: a concurrency sweep (aggregate tokens/s, p50/p95 time to first token
and inter-token latency) through each server's OpenAI-compatible streaming chat route,
the same requests to every server: genserve (llama.cpp engine, and transformers engine)
behind its bridge, and llama.cpp's own llama-server on the same GGUF file. Also the bare
transformers `generate` and our gRPC and bridge routes at one stream."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from genserve.server.manifest import Modality, ModelSpec, load_manifest, manifest_path
from genserve.server.text.loader import _checkpoint
from genserve.server.text.weights import prepare_weights
from genserve.v1 import text_pb2, text_pb2_grpc
from tests.server_thread import MODEL_STORE

PROMPT = "Explain what FastAPI is and why people use it."


@dataclass
class StreamTiming:
    tokens: int
    ttft_s: float
    gaps_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class SweepPoint:
    server: str
    concurrency: int
    aggregate_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    failed_streams: int


def text_spec() -> ModelSpec:
    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert spec is not None
    return spec


def tiny_text_spec(name: str) -> ModelSpec:
    specs = load_manifest(manifest_path("tiny")).specs(Modality.TEXT)
    return next(spec for spec in specs if spec.name == name)


def tiny_gguf() -> Path:
    spec = text_spec()
    return Path(spec.resolved_source(MODEL_STORE)) / str(spec.gguf_file)


def load_text_model(quantization: str = "none", cpu_linear: str = "aten") -> tuple[Any, Any]:
    """The bare model and tokenizer, with the server's weight options applied."""
    source, extra = _checkpoint(text_spec(), MODEL_STORE)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra).eval()
    return tokenizer, prepare_weights(model, quantization=quantization, cpu_linear=cpu_linear)


def chat_ids(tokenizer: Any) -> Any:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )


def greedy(model: Any, ids: Any, max_new_tokens: int) -> list[int]:
    """One greedy `generate` of exactly `max_new_tokens`; the new token ids."""
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    return list(out[0, ids["input_ids"].shape[1] :].tolist())


# A system prompt every request shares (the seed's), and a different question per stream.
SYSTEM_PROMPT = (
    "Your name is FastAPI bot and you are a helpful chatbot responsible for teaching "
    "FastAPI to your users. Always respond in markdown."
)
QUESTIONS = (
    "Explain what FastAPI is and why people use it.",
    "How do I declare a path parameter in FastAPI?",
    "What is dependency injection in FastAPI?",
    "How do I return JSON from an endpoint?",
    "How does FastAPI validate request bodies?",
    "What is the difference between async def and def endpoints?",
    "How do I add middleware to a FastAPI app?",
    "How do I serve static files?",
    "How do I write tests for a FastAPI app?",
    "What is Pydantic and how does FastAPI use it?",
    "How do I handle errors and return custom status codes?",
    "How do I stream a response?",
    "How do background tasks work?",
    "How do I add authentication with OAuth2?",
    "How do I deploy FastAPI with uvicorn?",
    "What are routers and how do I use them?",
)


def chat_body(question: int, max_new_tokens: int, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": QUESTIONS[question % len(QUESTIONS)]},
        ],
        "max_tokens": max_new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def openai_stream(url: str, model: str, question: int, max_new_tokens: int) -> StreamTiming:
    """One streamed chat completion; tokens counted from the usage the server reports.
    The clock starts before the request is sent: a server that holds its response headers
    back until the first token must not look faster for it."""
    started = time.perf_counter()
    with (
        httpx.Client(timeout=600) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=chat_body(question, max_new_tokens, model)
        ) as response,
    ):
        response.raise_for_status()
        events = (
            json.loads(line[5:])
            for line in response.iter_lines()
            if line.startswith("data:") and "[DONE]" not in line
        )
        return _timed(events, _has_content, _usage_tokens, started)


def grpc_stream(target: str, model: str, question: int, max_new_tokens: int) -> StreamTiming:
    """The same request through the gRPC TextService (a channel of its own, as each HTTP
    stream has its own connection); tokens counted from its final usage."""
    started = time.perf_counter()
    question_text = QUESTIONS[question % len(QUESTIONS)]
    request = text_pb2.TextGenerateRequest(
        messages=[
            text_pb2.ChatMessage(role="system", content=SYSTEM_PROMPT),
            text_pb2.ChatMessage(role="user", content=question_text),
        ],
        system_prompt="",  # the system turn is in the messages
        max_new_tokens=max_new_tokens,
        do_sample=False,
        model=model,
    )
    with grpc.insecure_channel(target) as channel:
        events = text_pb2_grpc.TextServiceStub(channel).Generate(request, timeout=600)
        return _timed(
            events,
            lambda event: event.HasField("delta"),
            lambda event: event.final.usage.completion_tokens if event.HasField("final") else None,
            started,
        )


def openai_greedy_text(url: str, model: str, question: int, max_new_tokens: int) -> str:
    body = chat_body(question, max_new_tokens, model) | {"stream": False}
    body.pop("stream_options")
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


def _has_content(event: dict[str, Any]) -> bool:
    choices = event.get("choices") or []
    return bool(choices and choices[0].get("delta", {}).get("content"))


def _usage_tokens(event: dict[str, Any]) -> int | None:
    usage = event.get("usage")
    return int(usage["completion_tokens"]) if usage else None


class QuestionCounter:
    """Hands each stream the next question, so concurrent streams ask different ones."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def __call__(self) -> int:
        return next(self._next)


def _timed(
    events: Iterator[Any],
    is_token: Callable[[Any], bool],
    final_tokens: Callable[[Any], int | None],
    started: float,
) -> StreamTiming:
    last = None
    timing = StreamTiming(tokens=0, ttft_s=0.0)
    for event in events:
        if is_token(event):
            now = time.perf_counter()
            if last is None:
                timing.ttft_s = now - started
            else:
                timing.gaps_s.append(now - last)
            last = now
        tokens = final_tokens(event)
        if tokens is not None:
            timing.tokens = tokens
    return timing


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _run_concurrently(
    one_stream: Callable[[], StreamTiming], concurrency: int
) -> tuple[list[StreamTiming], float]:
    """`concurrency` streams released together; their timings and the wall time."""
    timings: list[StreamTiming] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)

    def worker() -> None:
        barrier.wait()
        try:
            timing = one_stream()
        except Exception as error:  # a failed stream is reported, not hidden
            timing = StreamTiming(tokens=0, ttft_s=0.0, error=f"{type(error).__name__}: {error}")
        with lock:
            timings.append(timing)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timings, time.perf_counter() - started


def sweep(
    name: str, one_stream: Callable[[], StreamTiming], levels: list[int], waves: int = 1
) -> list[SweepPoint]:
    """Per concurrency level, `waves` waves of streams released together: the aggregate
    is the median wave's, latencies are percentiles over every stream of every wave."""
    one_stream()  # warm-up
    points = []
    for concurrency in levels:
        timings: list[StreamTiming] = []
        aggregates = []
        for _ in range(waves):
            wave, wall = _run_concurrently(one_stream, concurrency)
            timings += wave
            aggregates.append(sum(t.tokens for t in wave) / wall)
        ok = [t for t in timings if t.error is None]
        ttfts = [t.ttft_s * 1000 for t in ok]
        gaps = [g * 1000 for t in ok for g in t.gaps_s]
        points.append(
            SweepPoint(
                server=name,
                concurrency=concurrency,
                aggregate_tokens_per_s=round(statistics.median(aggregates), 2),
                ttft_p50_ms=round(percentile(ttfts, 0.5), 1),
                ttft_p95_ms=round(percentile(ttfts, 0.95), 1),
                itl_p50_ms=round(percentile(gaps, 0.5), 1),
                itl_p95_ms=round(percentile(gaps, 0.95), 1),
                failed_streams=len(timings) - len(ok),
            )
        )
    return points


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up")


def as_dicts(points: list[SweepPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]
