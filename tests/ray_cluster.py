"""A real two-node Ray cluster on this machine, loopback only, for the Ray placement tests.

`ray start --head --num-cpus 1` and a second `ray start --address ...`: two raylets, so
replicas land on two nodes as they would on two machines. Stopped with `ray stop --force`
whatever happens; the test process's own connection is shut down first.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 120
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, env=ENV, timeout=START_TIMEOUT_S)


@contextmanager
def two_node_cluster() -> Iterator[str]:
    """Yields the head's address (127.0.0.1:port)."""
    address = f"127.0.0.1:{free_port()}"
    node = ("--num-cpus", "1", "--node-ip-address", "127.0.0.1")
    try:
        _ray(
            "start",
            "--head",
            "--port",
            address.split(":")[1],
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            *node,
        )
        _ray("start", "--address", address, *node)
        yield address
    finally:
        import ray

        ray.shutdown()  # this process's driver connection (the edges' handles)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV, timeout=60)
