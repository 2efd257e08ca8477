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

import grpc
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.text_throughput import text_spec
from genserve.server.background import MODEL_STORE


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
def served_text_model(cpu_linear: str = "onednn") -> Iterator[str]:
    """Yields the gRPC target of a server process holding only the text model."""
    spec = text_spec().model_copy(update={"cpu_linear": cpu_linear})
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as folder:
        manifest = Path(folder) / "text.toml"
        manifest.write_text(
            tomli_w.dumps({"text": [spec.model_dump(mode="json", exclude_none=True)]})
        )
        port = free_port()
        command = [sys.executable, "-m", "genserve.server", "--host", "127.0.0.1"]
        command += ["--port", str(port)]
        command += ["--metrics-port", "0", "--data-dir", folder, "--manifest", str(manifest)]
        command += ["--model-store", str(MODEL_STORE), "--log-level", "WARNING"]
        process = subprocess.Popen(command)
        try:
            target = f"127.0.0.1:{port}"
            wait_serving(target, process)
            yield target
        finally:
            process.terminate()
            process.wait(timeout=60)
