"""The board: each deployment's replicas post their engine's stats here; edges read them.

Serve routes each request to some replica and offers no way to ask one replica how it is
doing, so every replica posts its status every `poll_s`, and the edges read the whole
board at the same pace (queue and in-flight gauges, the requests each replica gave up).
One small actor per Serve application, named after it, created by whoever comes first. It
also keeps the digest of the configuration deployed, so a second edge does not redeploy.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from genserve.server.ray_serve.wire import ReplicaStatus

# A replica that has not posted for this long is gone (killed, or its node lost).
STALE_AFTER_S = 3.0


class ReplicaBoard:
    def __init__(self) -> None:
        self._latest: dict[str, ReplicaStatus] = {}
        self._received_at: dict[str, float] = {}
        self._config = ""

    def record_config(self, digest: str) -> bool:
        """The deployed configuration's digest; True when it differs from the last one.
        Serve redeploys (a rolling restart) on every `serve.run`: edges that share the
        application deploy only what changed."""
        changed, self._config = digest != self._config, digest
        return changed

    def post(self, status: ReplicaStatus) -> None:
        self._latest[status.info.id] = status
        self._received_at[status.info.id] = time.monotonic()

    def read(self) -> list[ReplicaStatus]:
        """The replicas that posted lately; older entries are dropped."""
        now = time.monotonic()
        for replica, at in list(self._received_at.items()):
            if now - at > STALE_AFTER_S:
                del self._received_at[replica], self._latest[replica]
        return list(self._latest.values())


def board_for(app: str, namespace: str) -> Any:
    """The application's board actor, created if nobody has yet. Detached: it outlives the
    edge or replica that made it, and goes with the cluster (or `ray.kill`)."""
    actor = ray.remote(num_cpus=0)(ReplicaBoard)
    return actor.options(  # type: ignore[attr-defined]
        name=f"genserve-board:{app}",
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote()
