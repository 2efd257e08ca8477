"""A real multi-node Ray cluster on this machine, loopback only: for tests, benchmarks and
trying placement out (like background.py's server thread).

`ray start --head --num-cpus 1` and more `ray start --address ...`: one raylet per node, so
replicas land on several nodes as they would on several machines. Stopped with
`ray stop --force` whatever happens (this process's own connection is shut down first):
it stops every Ray process on the machine, so use it where no other cluster runs.
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
# Loopback only, so no token auth: Ray 2.60 turns it on for `ray start --head` wherever an
# earlier in-process ray.init() left ~/.ray/auth_token, and the second node then fails to
# join. This process's own driver connects under the same setting.
AUTH_MODE = "disabled"
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": AUTH_MODE}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray(*args: str) -> None:
    done = subprocess.run(
        [RAY, *args], capture_output=True, text=True, env=ENV, timeout=START_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stderr[-2000:]}")


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[str]:
    """Yields the head's address (127.0.0.1:port)."""
    address = f"127.0.0.1:{free_port()}"
    node = ("--num-cpus", str(cpus_per_node), "--node-ip-address", "127.0.0.1")
    os.environ.setdefault("RAY_AUTH_MODE", AUTH_MODE)  # for ray.init() in this process
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
        for _ in range(nodes - 1):
            _ray("start", "--address", address, *node)
        yield address
    finally:
        import ray

        ray.shutdown()  # this process's driver connection (the edges' handles)
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV, timeout=60)
