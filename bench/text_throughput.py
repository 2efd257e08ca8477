"""Text throughput: raw `generate` against the same request served over gRPC and the
bridge, then a concurrency sweep (aggregate tokens/s, p50/p95 time to first token and
inter-token latency) against our server and, when it is installed, against
llama-cpp-python's OpenAI-compatible server on the same GGUF file."""

from __future__ import annotations

import json
import statistics
import subprocess
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

from genserve.server.background import MODEL_STORE
from genserve.server.manifest import Modality, ModelSpec, load_manifest, manifest_path
from genserve.server.text.loader import _checkpoint
from genserve.server.text.weights import prepare_weights
from genserve.v1 import text_pb2, text_pb2_grpc

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


def raw_generate_tokens_per_s(
    max_new_tokens: int, repeats: int, cpu_linears: tuple[str, ...] = ("aten", "onednn")
) -> dict[str, float]:
    """The bare model: transformers generate, greedy, batch 1, same prompt and length;
    once per Linear kernel, alternated so both see the same machine load."""
    models = {kernel: load_text_model(cpu_linear=kernel) for kernel in cpu_linears}
    ids = chat_ids(next(iter(models.values()))[0])
    rates: dict[str, list[float]] = {kernel: [] for kernel in models}
    for attempt in range(repeats + 1):
        for kernel, (_, model) in models.items():
            started = time.perf_counter()
            produced = len(greedy(model, ids, max_new_tokens))
            if attempt:  # the first round warms up
                rates[kernel].append(produced / (time.perf_counter() - started))
    return {kernel: round(statistics.median(r), 2) for kernel, r in rates.items()}


def grpc_stream(channel: grpc.Channel, max_new_tokens: int) -> StreamTiming:
    stub = text_pb2_grpc.TextServiceStub(channel)
    request = text_pb2.TextGenerateRequest(
        prompt=PROMPT, system_prompt="", max_new_tokens=max_new_tokens, do_sample=False
    )
    return _timed(
        iter(stub.Generate(request)),
        lambda r: r.HasField("delta"),
        lambda r: r.final.usage.completion_tokens if r.HasField("final") else None,
    )


def bridge_stream(url: str, max_new_tokens: int) -> StreamTiming:
    body = {
        "prompt": PROMPT,
        "system_prompt": "",
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "stream": True,
    }
    with (
        httpx.Client(timeout=600) as client,
        client.stream("POST", f"{url}/generate/text", json=body) as response,
    ):
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        return _timed(
            lines, lambda line: '"text"' in line and "finish_reason" not in line, _bridge_tokens
        )


def _bridge_tokens(line: str) -> int | None:
    if "finish_reason" not in line:
        return None
    return int(json.loads(line[5:])["usage"]["completion_tokens"])


def llama_stream(url: str, max_new_tokens: int) -> StreamTiming:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_new_tokens,
        "temperature": 0,
        "stream": True,
    }
    count = 0
    with (
        httpx.Client(timeout=600) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
    ):
        lines = (
            line
            for line in response.iter_lines()
            if line.startswith("data:") and "[DONE]" not in line
        )

        def is_token(line: str) -> bool:
            nonlocal count
            choice = json.loads(line[5:])["choices"][0]
            if choice["delta"].get("content"):
                count += 1
                return True
            return False

        timing = _timed(lines, is_token, lambda line: None)
    timing.tokens = count
    return timing


def _timed(
    events: Iterator[Any],
    is_token: Callable[[Any], bool],
    final_tokens: Callable[[Any], int | None],
) -> StreamTiming:
    started = time.perf_counter()
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


def start_llama_server(python: Path, port: int) -> subprocess.Popen[bytes]:
    spec = text_spec()
    model = Path(spec.resolved_source(MODEL_STORE)) / str(spec.gguf_file)
    return subprocess.Popen(
        [
            str(python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--n_threads",
            "2",
            "--n_ctx",
            "4096",
            # by default a new request interrupts the running one; queue them instead
            "--interrupt_requests",
            "False",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


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
