"""The REST bridge's overhead: the same requests straight over gRPC and through the
bridge, alternated in one run against one server; medians, and their ratio."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.timing import alternate
from genserve.bridge.settings import BridgeSettings
from genserve.server.manifest import load_manifest, manifest_path
from genserve.v1 import image_pb2, image_pb2_grpc, text_pb2, text_pb2_grpc
from tests.bridge_thread import BridgeThread
from tests.server_thread import ServerThread, make_settings

TEXT = {"prompt": "What is FastAPI?", "max_new_tokens": 32, "do_sample": False}
IMAGE = {"prompt": "a cozy living room", "num_inference_steps": 2, "seed": 1}


def run(repeats: int) -> list[dict[str, Any]]:
    manifest = load_manifest(manifest_path("tiny"))
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(make_settings(Path(data_dir)), manifest).start()
        bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{server.port}")).start()
        channel = server.channel()
        http = httpx.Client(base_url=bridge.url, timeout=300)
        text_stub = text_pb2_grpc.TextServiceStub(channel)
        image_stub = image_pb2_grpc.ImageServiceStub(channel)
        cases = {
            "text, 32 tokens greedy (whole answer)": (
                lambda: list(text_stub.Generate(text_pb2.TextGenerateRequest(**TEXT))),
                lambda: http.post("/generate/text", json=TEXT).raise_for_status(),
            ),
            "image 64x64, 2 steps (PNG)": (
                lambda: list(image_stub.Generate(image_pb2.ImageGenerateRequest(**IMAGE))),
                lambda: http.post("/generate/image", json=IMAGE).raise_for_status(),
            ),
        }
        rows = []
        try:
            for name, (grpc_call, http_call) in cases.items():
                grpc_ms, http_ms = alternate(grpc_call, http_call, repeats)
                g, h = statistics.median(grpc_ms), statistics.median(http_ms)
                rows.append(
                    {
                        "request": name,
                        "grpc_ms": round(g, 1),
                        "bridge_ms": round(h, 1),
                        "overhead_ms": round(h - g, 1),
                        "bridge_over_grpc": round(h / g, 3),
                        "repeats": repeats,
                    }
                )
        finally:
            http.close()
            channel.close()
            bridge.stop()
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bridge_overhead.json"))
    args = parser.parse_args()
    rows = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("| request | gRPC ms | bridge ms | overhead ms | bridge / gRPC |")
    print("|---|---|---|---|---|")
    columns = ("request", "grpc_ms", "bridge_ms", "overhead_ms", "bridge_over_grpc")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
