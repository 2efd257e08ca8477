"""A real OpenAI-compatible upstream for the upstream-engine tests: a second genserve
(server + HTTP bridge, each its own process, as users run them) with auth on, and an
edge server whose models are served by it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from bench.server_process import free_port, wait_serving
from bench.text_throughput import wait_http
from genserve.server.auth.keys import create_key
from genserve.server.manifest import load_manifest, manifest_path
from tests.server_thread import MODEL_STORE

# Text costs prompt/4 + max_new_tokens units. A request asking for BUDGET_DRAIN_TOKENS
# new tokens but stopped after a few by a stop sequence takes the `throttled` key's whole
# budget in a moment; one asking for RETRY_TOKENS then waits up to RETRY_S (less what
# refilled meanwhile): long enough to be refused, short enough for the edge to wait.
TEXT_BUDGET = 1200.0
BUDGET_DRAIN_TOKENS = 1100  # with the system prompt the upstream adds: ~1140
RETRY_TOKENS = 200
RETRY_S = RETRY_TOKENS / (TEXT_BUDGET / 60)  # 10 s
LENIENT_AUTH = ["--auth.max-failures", "1000"]  # the wrong-key test must not lock us out


@dataclass(frozen=True)
class UpstreamKeys:
    path: Path
    edge: str  # what the edge's models send
    throttled: str  # text budget TEXT_BUDGET per minute


@dataclass
class Upstream:
    """The upstream genserve: its gRPC target, its bridge's /v1 URL, its usage log."""

    target: str
    url: str
    data_dir: Path
    keys: UpstreamKeys
    processes: list[subprocess.Popen[bytes]]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def usage_rows(self, request_id: str) -> list[dict[str, Any]]:
        """The upstream server's usage rows of one request ID (ours, forwarded)."""
        with sqlite3.connect(self.data_dir / "usage.sqlite3") as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute(
                "SELECT * FROM usage WHERE request_id = ? ORDER BY id", (request_id,)
            )
            return [dict(row) for row in rows]


def upstream_manifest() -> dict[str, Any]:
    """Text (llama.cpp), embeddings, image and speech, all preloaded."""
    tiny = load_manifest(manifest_path("tiny"))

    def entry(spec: Any) -> dict[str, Any]:
        dumped: dict[str, Any] = spec.model_dump(mode="json", exclude_none=True)
        return dumped | {"load_policy": "preload", "default": True}

    return {
        "text": [entry(tiny.text[0])],
        "embedding": [entry(tiny.embedding[0])],
        "image": [entry(tiny.image[0])],
        "audio": [entry(next(spec for spec in tiny.audio if spec.name == "tiny-bark"))],
    }


def bridge_command(target: str, port: int, keys: UpstreamKeys) -> list[str]:
    command = [sys.executable, "-m", "genserve.bridge", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--grpc-target", target, "--log-level", "WARNING"]
    command += ["--keys-file", str(keys.path), "--api-key", keys.edge, *LENIENT_AUTH]
    return command


@contextmanager
def bridge_on(upstream: Upstream, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """One more bridge in front of the upstream server, on a port the test chose."""
    process = subprocess.Popen(bridge_command(upstream.target, port, upstream.keys))
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


@contextmanager
def genserve_upstream(folder: Path) -> Iterator[Upstream]:
    keys_path = folder / "upstream-keys.json"
    keys = UpstreamKeys(
        path=keys_path,
        edge=create_key(keys_path, "edge"),
        throttled=create_key(keys_path, "throttled", budget_per_minute={"text": TEXT_BUDGET}),
    )
    manifest = folder / "upstream.toml"
    manifest.write_text(tomli_w.dumps(upstream_manifest()))
    grpc_port, http_port = free_port(), free_port()
    server = [sys.executable, "-m", "genserve.server", "--host", "127.0.0.1"]
    server += ["--port", str(grpc_port), "--metrics-port", "0", "--data-dir", str(folder)]
    server += ["--manifest", str(manifest), "--model-store", str(MODEL_STORE)]
    server += ["--keys-file", str(keys_path), "--log-level", "WARNING", *LENIENT_AUTH]
    processes = [subprocess.Popen(server)]
    try:
        target = f"127.0.0.1:{grpc_port}"
        wait_serving(target, processes[0])
        processes.append(subprocess.Popen(bridge_command(target, http_port, keys)))
        url = f"http://127.0.0.1:{http_port}"
        wait_http(f"{url}/readyz")
        yield Upstream(target, url, folder, keys, processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
