"""What placement `process` costs a text stream: the same llama.cpp model served in the
server's process (`local`) and in a worker process (`process`), two server processes side
by side, one request at a time, alternated. Time to first token and the gap between
tokens, measured by a gRPC client; their differences are the hop (engine → worker socket
→ server)."""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from typing import Any

import grpc

from bench.server_process import served_manifest
from bench.text_throughput import tiny_text_spec
from genserve.v1 import text_pb2, text_pb2_grpc

MODEL = "smollm2-135m-instruct"
PROMPT = "Explain what FastAPI is and why people use it."


def _manifest(placement: str) -> dict[str, Any]:
    spec = tiny_text_spec(MODEL).model_copy(update={"placement": placement})
    return {"text": [spec.model_dump(mode="json", exclude_none=True)]}


def _one_stream(stub: Any, tokens: int) -> tuple[float, float]:
    """(time to first token, median gap between tokens), in ms."""
    request = text_pb2.TextGenerateRequest(
        prompt=PROMPT, max_new_tokens=tokens, do_sample=False, seed=1
    )
    started = time.perf_counter()
    arrivals = []
    for response in stub.Generate(request, timeout=120):
        if response.HasField("delta"):
            arrivals.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return (arrivals[0] - started) * 1000, statistics.median(gaps) * 1000


def run(requests: int = 20, tokens: int = 64) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        stubs = {}
        for placement in ("local", "process"):
            target = stack.enter_context(served_manifest(_manifest(placement)))
            channel = stack.enter_context(grpc.insecure_channel(target))
            stubs[placement] = text_pb2_grpc.TextServiceStub(channel)
        ttft: dict[str, list[float]] = {"local": [], "process": []}
        gap: dict[str, list[float]] = {"local": [], "process": []}
        for stub in stubs.values():  # warm-up: first calls pay lazy setup
            _one_stream(stub, tokens)
        for _ in range(requests):
            for placement, stub in stubs.items():
                first, between = _one_stream(stub, tokens)
                ttft[placement].append(first)
                gap[placement].append(between)
    median = {p: (statistics.median(ttft[p]), statistics.median(gap[p])) for p in stubs}
    return {
        "requests": requests,
        "tokens": tokens,
        "ttft_ms_local": round(median["local"][0], 3),
        "ttft_ms_process": round(median["process"][0], 3),
        "ttft_added_ms": round(median["process"][0] - median["local"][0], 3),
        "token_gap_ms_local": round(median["local"][1], 4),
        "token_gap_ms_process": round(median["process"][1], 4),
        "token_gap_added_ms": round(median["process"][1] - median["local"][1], 4),
    }


def markdown(result: dict[str, Any]) -> str:
    return (
        f"Process hop: one llama.cpp stream at a time ({result['tokens']} tokens, median of "
        f"{result['requests']}), in the server's process against a worker process: time to "
        f"first token {result['ttft_ms_local']} against {result['ttft_ms_process']} ms "
        f"(**{result['ttft_added_ms']:+} ms**, target under 1 ms), the gap between tokens "
        f"{result['token_gap_ms_local']} against {result['token_gap_ms_process']} ms "
        f"(**{result['token_gap_added_ms']:+} ms**, target under 0.1 ms)."
    )


if __name__ == "__main__":
    print(run())
