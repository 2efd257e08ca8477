"""`make bench`: every measurement in one run, written to bench/results/.

python -m bench                    # the full run (about 15 minutes here)
python -m bench --quick            # tiny counts, so the harness cannot rot (make test)
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench import media_overhead, weights
from bench.server_process import served_text_model
from bench.text_throughput import (
    as_dicts,
    bridge_stream,
    grpc_stream,
    llama_stream,
    raw_generate_tokens_per_s,
    start_llama_server,
    sweep,
    wait_http,
)
from genserve.bridge.background import BridgeThread
from genserve.bridge.settings import BridgeSettings

LLAMA_PYTHON = Path("bench/.venv-llama/bin/python")
LLAMA_PORT = 8099


def run(quick: bool, out: Path) -> dict[str, Any]:
    tokens = 8 if quick else 128
    repeats = 1 if quick else 3
    levels = [1, 2] if quick else [1, 2, 4, 8, 16]
    waves = 1 if quick else 3
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores",
        "max_new_tokens": tokens,
        "waves_per_level": waves,
    }
    raw = raw_generate_tokens_per_s(tokens, repeats)
    results["raw_generate_tokens_per_s"] = raw["onednn"]  # the kernel the server runs
    results["raw_generate_stock_tokens_per_s"] = raw["aten"]
    with served_text_model("onednn") as target:
        bridge = BridgeThread(BridgeSettings(grpc_target=target)).start()
        channel = grpc.insecure_channel(target)
        try:
            one = [grpc_stream(channel, tokens) for _ in range(repeats + 1)][1:]
            results["served_grpc_tokens_per_s"] = round(
                sorted(t.tokens / (t.ttft_s + sum(t.gaps_s)) for t in one)[len(one) // 2], 2
            )
            via_bridge = [bridge_stream(bridge.url, tokens) for _ in range(repeats + 1)][1:]
            results["served_bridge_tokens_per_s"] = round(
                sorted(t.tokens / (t.ttft_s + sum(t.gaps_s)) for t in via_bridge)[
                    len(via_bridge) // 2
                ],
                2,
            )
            results["sweep_genserve"] = as_dicts(
                sweep("genserve", lambda: grpc_stream(channel, tokens), levels, waves)
            )
        finally:
            channel.close()
            bridge.stop()
    if not quick:  # the served sweep again on stock aten Linear layers: the kernel's share
        with served_text_model("aten") as target, grpc.insecure_channel(target) as channel:
            results["sweep_genserve_aten"] = as_dicts(
                sweep("genserve (aten Linear)", lambda: grpc_stream(channel, tokens), [1, 8], waves)
            )
    if LLAMA_PYTHON.exists() and not quick:
        process = start_llama_server(LLAMA_PYTHON, LLAMA_PORT)
        try:
            url = f"http://127.0.0.1:{LLAMA_PORT}"
            wait_http(f"{url}/v1/models")
            results["sweep_llama_cpp"] = as_dicts(
                sweep("llama.cpp", lambda: llama_stream(url, tokens), levels, waves)
            )
        finally:
            process.terminate()
            process.wait()
    results["weights"] = weights.compare(tokens if quick else 64, 1 if quick else 3)
    results["media_overhead"] = media_overhead.run(1 if quick else 5)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(summary(results))
    plot(results, out / "throughput.png")
    return results


def summary(results: dict[str, Any]) -> str:
    raw = results["raw_generate_tokens_per_s"]
    stock = results["raw_generate_stock_tokens_per_s"]
    served = results["served_grpc_tokens_per_s"]
    bridge = results["served_bridge_tokens_per_s"]
    lines = [
        f"Measured {results['date']} on {results['machine']}; {results['max_new_tokens']} new "
        f"tokens, greedy; medians; {results['waves_per_level']} waves of streams per "
        "concurrency level.",
        "",
        "| one stream | tokens/s | vs raw generate (same kernel) |",
        "|---|---|---|",
        f"| raw `model.generate`, stock transformers (aten Linear) | {stock} | {stock / raw:.2f} |",
        f"| raw `model.generate`, oneDNN Linear (as served) | {raw} | 1.00 |",
        f"| served over gRPC | {served} | {served / raw:.2f} |",
        f"| served through the bridge | {bridge} | {bridge / raw:.2f} |",
        "",
        "| server | streams | aggregate tokens/s | TTFT p50 / p95 ms | inter-token p50 / p95 ms "
        "| failed |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("sweep_genserve", "sweep_genserve_aten", "sweep_llama_cpp"):
        for p in results.get(key, []):
            lines.append(
                f"| {p['server']} | {p['concurrency']} | {p['aggregate_tokens_per_s']} | "
                f"{p['ttft_p50_ms']} / {p['ttft_p95_ms']} | "
                f"{p['itl_p50_ms']} / {p['itl_p95_ms']} | {p['failed_streams']} |"
            )
    lines += [
        "",
        weights.markdown(results["weights"]),
        "",
        media_overhead.markdown(results["media_overhead"]),
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("sweep_genserve", "sweep_genserve_aten", "sweep_llama_cpp"):
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
