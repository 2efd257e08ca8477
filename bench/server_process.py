"""The text model served by `python -m genserve.server` in its own process, as users run it and
as llama.cpp's server runs beside it: the benchmark's client threads then share no GIL
with the server's scheduler and event loop."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.text_throughput import tiny_text_spec, wait_http
from tests.server_thread import MODEL_STORE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{target} did not report SERVING in {timeout_s} s")


@contextmanager
def served_text_models(names: list[str], *options: str) -> Iterator[str]:
    """Yields the gRPC target of a server process holding these tiny-profile text models,
    all preloaded (the first is the default), started with these extra options."""
    specs = [tiny_text_spec(name) for name in names]
    entries = [
        spec.model_copy(update={"load_policy": "preload", "default": i == 0}).model_dump(
            mode="json", exclude_none=True
        )
        for i, spec in enumerate(specs)
    ]
    with served_manifest({"text": entries}, *options) as target:
        yield target


@contextmanager
def served_manifest(manifest: dict[str, Any], *options: str) -> Iterator[str]:
    """Yields the gRPC target of a server process serving this manifest (loopback, no auth)."""
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as folder:
        path = Path(folder) / "manifest.toml"
        path.write_text(tomli_w.dumps(manifest))
        port = free_port()
        command = [sys.executable, "-m", "genserve.server", "--host", "127.0.0.1"]
        command += ["--port", str(port)]
        command += ["--metrics-port", "0", "--data-dir", folder, "--manifest", str(path)]
        command += ["--model-store", str(MODEL_STORE), "--log-level", "WARNING", *options]
        process = subprocess.Popen(command)
        try:
            target = f"127.0.0.1:{port}"
            wait_serving(target, process)
            yield target
        finally:
            process.terminate()
            process.wait(timeout=60)


@contextmanager
def bridge_process(target: str) -> Iterator[str]:
    """The HTTP bridge in its own process (as users run it), in front of `target`."""
    port = free_port()
    command = [sys.executable, "-m", "genserve.bridge", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--grpc-target", target, "--log-level", "WARNING"]
    process = subprocess.Popen(command)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
