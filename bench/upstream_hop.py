"""The cost of the hop to an upstream: one OpenAI-compatible server called directly (HTTP,
streaming chat, a pooled client) against the same server behind genserve (our gRPC
TextService, a model whose engine is `upstream`, in a server process of its own). The
same greedy request (one question, its prompt cached upstream) alternates between the two
paths, one at a time; medians of time to first token and of the whole stream, and of the
differences pair by pair: what genserve adds."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

from bench.server_process import served_manifest
from bench.text_throughput import QUESTIONS, SYSTEM_PROMPT, chat_body
from genserve.v1 import text_pb2, text_pb2_grpc

EDGE_MODEL = "hop"
QUESTION = 0


@dataclass
class Timing:
    ttft_ms: float
    total_ms: float
    tokens: int


def direct(client: httpx.Client, model: str, question: int, tokens: int) -> Timing:
    try:
        return _direct(client, model, question, tokens)
    except httpx.RemoteProtocolError:
        # A pooled connection the server had just closed (llama-server's cpp-httplib ends a
        # keep-alive connection after 5 requests): once more, on a new one. genserve's
        # engine does the same (a retry before the first byte).
        return _direct(client, model, question, tokens)


def _direct(client: httpx.Client, model: str, question: int, tokens: int) -> Timing:
    started = time.perf_counter()
    first = None
    count = 0
    body = chat_body(question, tokens, model)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or "[DONE]" in line:
                continue
            choices = json.loads(line[5:]).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                count += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    return Timing(((first or end) - started) * 1000, (end - started) * 1000, count)


def through_genserve(stub: Any, question: int, tokens: int) -> Timing:
    request = text_pb2.TextGenerateRequest(
        model=EDGE_MODEL,
        messages=[
            text_pb2.ChatMessage(role="system", content=SYSTEM_PROMPT),
            text_pb2.ChatMessage(role="user", content=QUESTIONS[question % len(QUESTIONS)]),
        ],
        max_new_tokens=tokens,
        do_sample=False,
    )
    started = time.perf_counter()
    first = None
    count = 0
    for response in stub.Generate(request, timeout=600):
        if response.HasField("delta"):
            count += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    return Timing(((first or end) - started) * 1000, (end - started) * 1000, count)


def run(
    upstream_url: str, upstream_model: str, label: str, requests: int, tokens: int
) -> dict[str, Any]:
    manifest = {
        "text": [
            {
                "name": EDGE_MODEL,
                "engine": "upstream",
                "upstream": {
                    "kind": "openai",
                    "base_url": f"{upstream_url}/v1",
                    "model": upstream_model,
                },
            }
        ]
    }
    direct_runs: list[Timing] = []
    hop_runs: list[Timing] = []
    with (
        served_manifest(manifest) as target,
        grpc.insecure_channel(target) as channel,
        httpx.Client(base_url=upstream_url, timeout=600) as client,
    ):
        stub = text_pb2_grpc.TextServiceStub(channel)
        # One question throughout: the upstream's prompt cache then serves both paths alike
        # (a prompt one path had just sent would spare the other its prefill).
        through_genserve(stub, QUESTION, tokens)  # warm both paths' connections and the cache
        direct(client, upstream_model, QUESTION, tokens)
        for index in range(requests):
            # Alternate which path goes first, so drift on the machine falls on both.
            if index % 2 == 0:
                direct_runs.append(direct(client, upstream_model, QUESTION, tokens))
                hop_runs.append(through_genserve(stub, QUESTION, tokens))
            else:
                hop_runs.append(through_genserve(stub, QUESTION, tokens))
                direct_runs.append(direct(client, upstream_model, QUESTION, tokens))

    def median(runs: list[Timing], field: str) -> float:
        return round(statistics.median(getattr(run, field) for run in runs), 2)

    ttft_direct, ttft_hop = median(direct_runs, "ttft_ms"), median(hop_runs, "ttft_ms")
    total_direct, total_hop = median(direct_runs, "total_ms"), median(hop_runs, "total_ms")
    # Per request, side by side: the hop's cost is the difference of each pair.
    added_ttft = [h.ttft_ms - d.ttft_ms for d, h in zip(direct_runs, hop_runs, strict=True)]
    added_total = [h.total_ms - d.total_ms for d, h in zip(direct_runs, hop_runs, strict=True)]
    return {
        "upstream": label,
        "requests": requests,
        "max_new_tokens": tokens,
        "tokens_direct": median(direct_runs, "tokens"),
        "tokens_via_genserve": median(hop_runs, "tokens"),
        "ttft_direct_ms": ttft_direct,
        "ttft_via_genserve_ms": ttft_hop,
        "total_direct_ms": total_direct,
        "total_via_genserve_ms": total_hop,
        "added_ttft_median_ms": round(statistics.median(added_ttft), 2),
        "added_total_median_ms": round(statistics.median(added_total), 2),
    }


def markdown(result: dict[str, Any]) -> str:
    r = result
    return "\n".join(
        [
            f"The hop to an upstream ({r['upstream']}): {r['requests']} greedy requests of "
            f"{r['max_new_tokens']} tokens, one at a time, alternating direct (HTTP) and through "
            "genserve (gRPC, engine = upstream); medians.",
            "",
            "| path | TTFT ms | total ms |",
            "|---|---|---|",
            f"| direct | {r['ttft_direct_ms']} | {r['total_direct_ms']} |",
            f"| through genserve | {r['ttft_via_genserve_ms']} | {r['total_via_genserve_ms']} |",
            f"| added (median of pairs) | {r['added_ttft_median_ms']} | "
            f"{r['added_total_median_ms']} |",
        ]
    )
