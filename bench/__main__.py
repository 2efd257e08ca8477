"""`make bench`: every measurement in one run, written to bench/results/.

python -m bench                    # the full run (about 18 minutes here)
python -m bench --quick            # tiny counts, so the harness cannot rot (make test)

llama-server, the peer, is built by `make bench` (bench/.llama-server); without it the
sweep runs on genserve alone. The Ray Serve measurements (bench/ray_scale.py) start and
stop a local two-node Ray cluster of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    image_batching,
    job_overhead,
    media_overhead,
    perplexity,
    process_hop,
    profile_isolation,
    ray_scale,
    upstream_hop,
    weights,
)
from bench.llama_server import LLAMA_SERVER, start_llama_server
from bench.server_process import bridge_process, free_port, served_text_models
from bench.text_throughput import (
    QUESTIONS,
    QuestionCounter,
    StreamTiming,
    as_dicts,
    grpc_stream,
    load_text_model,
    openai_greedy_text,
    openai_stream,
    sweep,
    tiny_gguf,
    wait_http,
)

LLAMA_CPP_MODEL = "smollm2-135m-instruct"  # the tiny profile's default, engine llama.cpp
TRANSFORMERS_MODEL = "smollm2-135m-instruct-transformers"
HOP_REQUESTS, HOP_TOKENS = 40, 32
SWEEPS = (
    "sweep_genserve",
    "sweep_genserve_grpc",
    "sweep_genserve_kv_streams",
    "sweep_llama_server",
    "sweep_genserve_transformers",
)


def run(quick: bool, out: Path) -> dict[str, Any]:
    tokens = 8 if quick else 128
    levels = [1, 2] if quick else [1, 8, 16]
    waves = 1 if quick else 3
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "max_new_tokens": tokens,
        "waves_per_level": waves,
    }
    peer = LLAMA_SERVER.exists() and not quick
    # Each engine in a server process of its own: once torch has run a multi-threaded op
    # in a process, llama.cpp's decode there is ~25% slower (two OpenMP runtimes; see the
    # README), and a text-heavy deployment would not put a torch model beside it.
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(served_text_models([LLAMA_CPP_MODEL]))
        url = stack.enter_context(bridge_process(target))
        servers = {"sweep_genserve": ("genserve (llama.cpp engine)", url, LLAMA_CPP_MODEL)}
        llama_port = free_port()
        llama_url = f"http://127.0.0.1:{llama_port}"
        if peer:
            process = stack.enter_context(llama_server_process(llama_port))
            servers["sweep_llama_server"] = ("llama-server", llama_url, "smollm2")
        if not quick:
            # The same engine with a KV stream per sequence (as llama-server's slots), not
            # one pool: attention reads only the sequence's own cells.
            streams_url = stack.enter_context(
                bridge_process(
                    stack.enter_context(
                        served_text_models([LLAMA_CPP_MODEL], "--no-text.kv-unified")
                    )
                )
            )
            servers["sweep_genserve_kv_streams"] = (
                "genserve (llama.cpp, KV stream per sequence)",
                streams_url,
                LLAMA_CPP_MODEL,
            )
            torch_url = stack.enter_context(
                bridge_process(stack.enter_context(served_text_models([TRANSFORMERS_MODEL])))
            )
            servers["sweep_genserve_transformers"] = (
                "genserve (transformers engine)",
                torch_url,
                TRANSFORMERS_MODEL,
            )
        # Side by side: each level runs on every server before the next level.
        streams = {
            key: (name, streams_of(base, model, QuestionCounter(), tokens))
            for key, (name, base, model) in servers.items()
        }
        # The first server's gRPC TextService itself, without the bridge in front.
        grpc_questions = QuestionCounter()
        streams["sweep_genserve_grpc"] = (
            "genserve (llama.cpp engine), gRPC",
            lambda: grpc_stream(target, LLAMA_CPP_MODEL, grpc_questions(), tokens),
        )
        for level in levels:
            for key, (name, stream) in streams.items():
                points = as_dicts(sweep(name, stream, [level], waves))
                results.setdefault(key, []).extend(points)
        if peer:
            assert process.poll() is None, "llama-server exited"
            results["greedy_agreement"] = greedy_agreement(url, llama_url, tokens)
        results["upstream_hop"] = upstream_hop_run(stack, quick, peer, url)
    results["process_hop"] = process_hop.run(*((2, 8) if quick else (20, 64)))
    results["profile_isolation"] = profile_isolation.run(*((1, 8) if quick else (8, 128)))
    results["perplexity"] = perplexity_pair()
    results["weights"] = weights.compare(tokens if quick else 64, 1 if quick else 3)
    results["media_overhead"] = media_overhead.run(1 if quick else 5)
    results["image_batching"] = image_batching.run(1 if quick else 5)
    results["job_overhead"] = job_overhead.run(*((1, 3) if quick else (7, 50)))
    results["ray_scale"] = (
        ray_scale.run(rounds=1, repeats=1, per_round=4) if quick else ray_scale.run(5, 15)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(summary(results))
    plot(results, out / "throughput.png")
    return results


@contextlib.contextmanager
def llama_server_process(port: int, threads: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    process = start_llama_server(tiny_gguf(), port, threads)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield process
    finally:
        process.terminate()
        process.wait()


def upstream_hop_run(
    stack: contextlib.ExitStack, quick: bool, peer: bool, genserve_url: str
) -> dict[str, Any]:
    """What genserve adds in front of an upstream. llama-server runs on one thread here,
    leaving the other core to the edge and the client (on two cores, a two-thread decode
    would be slowed by anything else running, which is not the hop's cost). Without it
    (quick runs), the upstream is genserve's own bridge."""
    if quick or not peer:
        return upstream_hop.run(genserve_url, LLAMA_CPP_MODEL, "genserve bridge", 2, 4)
    port = free_port()
    stack.enter_context(llama_server_process(port, threads=1))
    return upstream_hop.run(
        f"http://127.0.0.1:{port}", "smollm2", "llama-server, 1 thread", HOP_REQUESTS, HOP_TOKENS
    )


def streams_of(
    url: str, model: str, question: QuestionCounter, tokens: int
) -> Callable[[], StreamTiming]:
    """One stream per call, each asking the next bench question."""
    return lambda: openai_stream(url, model, question(), tokens)


def greedy_agreement(genserve_url: str, llama_url: str, tokens: int) -> dict[str, Any]:
    """The bench questions, greedy, one at a time on each server: identical answers."""
    same = 0
    for question in range(len(QUESTIONS)):
        ours = openai_greedy_text(genserve_url, LLAMA_CPP_MODEL, question, tokens)
        theirs = openai_greedy_text(llama_url, "smollm2", question, tokens)
        same += ours == theirs
    return {"identical": same, "of": len(QUESTIONS)}


def perplexity_pair() -> dict[str, float]:
    llama_cpp_ppl, ids = perplexity.llama_cpp_perplexity(tiny_gguf())
    _, model = load_text_model()
    transformers_ppl = perplexity.transformers_perplexity(model, ids)
    return {
        "llama_cpp": round(llama_cpp_ppl, 3),
        "transformers": round(transformers_ppl, 3),
        "ratio": round(llama_cpp_ppl / transformers_ppl, 4),
        "tokens": len(ids),
    }


def summary(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']}; {results['max_new_tokens']} new "
        f"tokens, greedy, one system prompt and a different question per stream, through each "
        f"server's OpenAI streaming chat route; medians of {results['waves_per_level']} waves "
        "per level, side by side in one run.",
        "",
        "| server | streams | aggregate tokens/s | vs llama-server | TTFT p50 / p95 ms "
        "| inter-token p50 / p95 ms | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    peer = {p["concurrency"]: p for p in results.get("sweep_llama_server", [])}
    for key in SWEEPS:
        for p in results.get(key, []):
            reference = peer.get(p["concurrency"])
            ratio = (
                f"{p['aggregate_tokens_per_s'] / reference['aggregate_tokens_per_s']:.2f}x"
                if reference
                else "-"
            )
            lines.append(
                f"| {p['server']} | {p['concurrency']} | {p['aggregate_tokens_per_s']} | {ratio} | "
                f"{p['ttft_p50_ms']} / {p['ttft_p95_ms']} | "
                f"{p['itl_p50_ms']} / {p['itl_p95_ms']} | {p['failed_streams']} |"
            )
    ppl = results["perplexity"]
    lines += [
        "",
        f"Perplexity on bench/data/perplexity.txt ({ppl['tokens']} tokens): llama.cpp "
        f"{ppl['llama_cpp']}, transformers {ppl['transformers']} (ratio {ppl['ratio']}).",
    ]
    if "greedy_agreement" in results:
        agreement = results["greedy_agreement"]
        lines.append(
            f"Greedy answers identical to llama-server's: {agreement['identical']} of "
            f"{agreement['of']} bench questions."
        )
    lines += [
        "",
        weights.markdown(results["weights"]),
        "",
        media_overhead.markdown(results["media_overhead"]),
        "",
        image_batching.markdown(results["image_batching"]),
        "",
        job_overhead.markdown(results["job_overhead"]),
        "",
        process_hop.markdown(results["process_hop"]),
        "",
        profile_isolation.markdown(results["profile_isolation"]),
        "",
        upstream_hop.markdown(results["upstream_hop"]),
        "",
        ray_scale.markdown(results["ray_scale"]),
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for key in SWEEPS:
        points = results.get(key, [])
        if not points:
            continue
        levels = [p["concurrency"] for p in points]
        label = points[0]["server"]
        throughput.plot(
            levels, [p["aggregate_tokens_per_s"] for p in points], marker="o", label=label
        )
        ttft.plot(levels, [p["ttft_p95_ms"] for p in points], marker="o", label=label)
    throughput.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", title="Throughput")
    ttft.set(xlabel="concurrent streams", ylabel="p95 time to first token (ms)", title="TTFT")
    for axes in (throughput, ttft):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    results = run(args.quick, args.out)
    print(summary(results))


if __name__ == "__main__":
    main()
