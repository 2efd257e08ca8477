"""Ray Serve placement: what scale-out buys, and what the edge-to-replica hop costs.

One edge (in this process) on a local two-node Ray cluster (one CPU per node), with the
tiny image model three ways side by side: in process, on a deployment of 1 replica and on
a deployment of 2 replicas (half a CPU each, so all three fit).

- scale: CONCURRENCY callers at once send image requests (64x64, 10 steps) to the 1-replica
  and the 2-replica deployment, in alternating rounds; aggregate images/s, median of rounds.
- hop: one request at a time, in process against on a replica, alternated. Serving overhead
  is the caller's time less the engine's own (queued + inference + encoding, from the final
  event), so the replica's slower single-threaded compute cancels out; the hop is the ray
  overhead less the in-process one. At two image sizes, few and many 4 KiB chunks: the
  slope gives the cost per chunk, the intercept the cost per request.

python -m bench.ray_scale [--rounds 5] [--repeats 15]   (also part of `python -m bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from genserve.server.manifest import Manifest, Modality
from genserve.server.ray_serve.engine import RayEngine
from genserve.server.ray_serve.local_cluster import local_cluster
from genserve.server.ray_serve.placement import RaySettings
from genserve.server.settings import MediaLimits
from genserve.v1 import image_pb2, image_pb2_grpc
from tests.server_thread import ServerThread, make_settings

LOCAL, ONE, TWO = "image-local", "image-ray-1", "image-ray-2"
CONCURRENCY = 4
CHUNK_SIZE = 4 * 1024
SCALE_STEPS = 10
SIZES = (64, 256)  # PNGs of noise: about 3 and about 48 chunks of 4 KiB


def manifest() -> Manifest:
    def image(name: str, replicas: int | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "source": "store:stable-diffusion"}
        if replicas is not None:
            entry |= {"placement": "ray", "ray": {"num_replicas": replicas, "num_cpus": 0.5}}
        return entry

    return Manifest.model_validate(
        {"image": [image(LOCAL, None) | {"default": True}, image(ONE, 1), image(TWO, 2)]}
    )


def request(model: str, side: int = 64, steps: int = SCALE_STEPS) -> image_pb2.ImageGenerateRequest:
    return image_pb2.ImageGenerateRequest(
        prompt="a cozy living room",
        model=model,
        width=side,
        height=side,
        num_inference_steps=steps,
        seed=1,
    )


def draw(channel: grpc.Channel, req: image_pb2.ImageGenerateRequest) -> tuple[float, float, int]:
    """(caller's ms, the engine's own ms, chunks) of one request."""
    started = time.perf_counter()
    chunks, final = 0, None
    for event in image_pb2_grpc.ImageServiceStub(channel).Generate(req):
        kind = event.WhichOneof("event")
        chunks += kind == "chunk"
        if kind == "final":
            final = event.final
    wall_ms = (time.perf_counter() - started) * 1000
    assert final is not None
    t = final.timings
    return wall_ms, t.queued_ms + t.inference_ms + t.encoding_ms, chunks


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def images_per_s(
    channel: grpc.Channel, model: str, count: int, replicas: list[int]
) -> tuple[float, float, float]:
    """(images/s, the edge process's CPU share, the replicas' CPU share): shares in cores,
    CPU seconds over wall seconds (the bench's callers run in the edge's process)."""
    edge_before, replicas_before = time.process_time(), sum(cpu_s(p) for p in replicas)
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda _: draw(channel, request(model)), range(count)))
    wall = time.perf_counter() - started
    edge = (time.process_time() - edge_before) / wall
    return count / wall, edge, (sum(cpu_s(p) for p in replicas) - replicas_before) / wall


def scale(
    server: ServerThread, channel: grpc.Channel, rounds: int, per_round: int
) -> dict[str, Any]:
    pids = {
        model: [r.info.pid for r in ray_engine(server, model).replicas()] for model in (ONE, TWO)
    }
    for model in (ONE, TWO):
        images_per_s(channel, model, CONCURRENCY, pids[model])  # warm-up: lazy setup
    runs: dict[str, list[tuple[float, float, float]]] = {ONE: [], TWO: []}
    for _ in range(rounds):
        for model in (ONE, TWO):
            runs[model].append(images_per_s(channel, model, per_round, pids[model]))

    def median(model: str, i: int) -> float:
        return round(statistics.median(run[i] for run in runs[model]), 2)

    return {
        "requests": f"{per_round} per round, {CONCURRENCY} at a time, 64x64, {SCALE_STEPS} steps",
        "rounds": rounds,
        "one_replica_images_per_s": median(ONE, 0),
        "two_replicas_images_per_s": median(TWO, 0),
        "ratio": round(median(TWO, 0) / median(ONE, 0), 2),
        "one_replica_cpu_cores": {"replicas": median(ONE, 2), "edge_and_callers": median(ONE, 1)},
        "two_replicas_cpu_cores": {"replicas": median(TWO, 2), "edge_and_callers": median(TWO, 1)},
    }


def hop(channel: grpc.Channel, repeats: int) -> dict[str, Any]:
    rows: dict[int, dict[str, float]] = {}
    for side in SIZES:
        calls = {model: _one_step(channel, model, side) for model in (LOCAL, ONE)}
        for call in calls.values():
            call()  # warm-up
        overhead: dict[str, list[float]] = {LOCAL: [], ONE: []}
        served: dict[str, list[float]] = {LOCAL: [], ONE: []}
        chunks = 0
        for _ in range(repeats):
            for model, call in calls.items():
                wall_ms, engine_ms, chunks = call()
                overhead[model].append(wall_ms - engine_ms)
                served[model].append(wall_ms)
        local, ray = statistics.median(overhead[LOCAL]), statistics.median(overhead[ONE])
        rows[side] = {
            "chunks": chunks,
            "in_process_ms": statistics.median(served[LOCAL]),
            "on_replica_ms": statistics.median(served[ONE]),
            "in_process_overhead_ms": local,
            "on_replica_overhead_ms": ray,
            "hop_ms": ray - local,
        }
    small, big = (rows[side] for side in SIZES)
    per_chunk = (big["hop_ms"] - small["hop_ms"]) / (big["chunks"] - small["chunks"])
    return {
        "repeats": repeats,
        "sizes": {
            f"{side}x{side}, 1 step": {k: round(v, 2) for k, v in row.items()}
            for side, row in rows.items()
        },
        "hop_per_request_ms": round(small["hop_ms"] - per_chunk * small["chunks"], 2),
        "hop_per_chunk_ms": round(per_chunk, 3),
    }


def _one_step(
    channel: grpc.Channel, model: str, side: int
) -> Callable[[], tuple[float, float, int]]:
    return lambda: draw(channel, request(model, side, steps=1))


def ray_engine(server: ServerThread, model: str) -> RayEngine:
    engine = server.server.registry.resolve(Modality.IMAGE, model).engine
    assert isinstance(engine, RayEngine)
    return engine


def replica_rss_mb(server: ServerThread) -> float:
    """Resident memory of one replica process (the 1-replica deployment's)."""
    pid = ray_engine(server, ONE).replicas()[0].info.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run(rounds: int, repeats: int, per_round: int = 16) -> dict[str, Any]:
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with local_cluster(nodes=2, cpus_per_node=1) as address, tempfile.TemporaryDirectory() as data:
        results["cluster_start_s"] = round(time.perf_counter() - started, 1)
        settings = make_settings(
            Path(data), media=MediaLimits(chunk_size=CHUNK_SIZE), ray=RaySettings(address=address)
        )
        started = time.perf_counter()
        server = ServerThread(settings, manifest()).start()
        results["edge_ready_s"] = round(time.perf_counter() - started, 1)  # 1 local + 3 replicas
        channel = server.channel()
        try:
            results["replica_rss_mb"] = replica_rss_mb(server)
            results["scale"] = scale(server, channel, rounds, per_round)
            results["hop"] = hop(channel, repeats)
        finally:
            channel.close()
            server.stop()
    return results


def markdown(results: dict[str, Any]) -> str:
    s, h = results["scale"], results["hop"]
    lines = [
        f"Ray Serve placement, tiny image model, local two-node cluster (1 CPU per node): "
        f"cluster up in {results['cluster_start_s']} s, edge serving (1 model in process, "
        f"3 replicas) {results['edge_ready_s']} s later; one replica holds "
        f"{results['replica_rss_mb']} MB.",
        "",
        f"| deployment | images/s ({s['requests']}; median of {s['rounds']} rounds) |",
        "|---|---|",
        f"| 1 replica | {s['one_replica_images_per_s']} |",
        f"| 2 replicas | {s['two_replicas_images_per_s']} ({s['ratio']}x) |",
        "",
        f"CPU in use, in cores (CPU seconds over wall seconds; 2 on this machine): 1 replica "
        f"{s['one_replica_cpu_cores']['replicas']} in the replica, "
        f"{s['one_replica_cpu_cores']['edge_and_callers']} in the edge and its callers; "
        f"2 replicas {s['two_replicas_cpu_cores']['replicas']} and "
        f"{s['two_replicas_cpu_cores']['edge_and_callers']}.",
        "",
        f"Edge-to-replica hop, against the in-process engine (medians of {h['repeats']}): "
        f"{h['hop_per_request_ms']} ms per request, {h['hop_per_chunk_ms']} ms per chunk.",
        "",
        "| request | chunks | in process ms | on a replica ms | overhead in process ms "
        "| overhead on a replica ms | hop ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in h["sizes"].items():
        lines.append(
            f"| {name} | {row['chunks']:.0f} | {row['in_process_ms']} | {row['on_replica_ms']} "
            f"| {row['in_process_overhead_ms']} | {row['on_replica_overhead_ms']} "
            f"| {row['hop_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ray_scale.json"))
    args = parser.parse_args()
    results = run(args.rounds, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
