"""The edge's side of the cluster: connect once, deploy each ray-placed model's Serve
application (or find it running), and hand the registry a RayEngine for it.

Our grpc.aio server stays the front: Serve's HTTP and gRPC proxies are never started (its
gRPC proxy runs no interceptors, serves no grpc.health.v1 and routes by method name only).
Deploying is idempotent: Serve restarts every replica on each `serve.run`, so the edge runs
one only when the digest of the model's spec and settings differs from the one deployed
(kept on the application's board), or the application is missing or failed. A second
edge with the same manifest leaves the replicas as they are.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import ray
from ray import serve
from ray.serve.schema import ApplicationStatus

from genserve.contract import SPECS
from genserve.server.manifest import Modality, ModelSpec
from genserve.server.ray_serve.board import board_for
from genserve.server.ray_serve.engine import RayEngine
from genserve.server.ray_serve.placement import RaySettings, app_name
from genserve.server.settings import Settings

logger = logging.getLogger(__name__)

DEPLOY_POLL_S = 0.5
_connect_lock = threading.Lock()


class DeploymentFailed(RuntimeError):
    """Serve could not start a model's replicas; the message is short and client-safe."""


def connect(settings: RaySettings) -> None:
    """ray.init once per process (several models share the connection), then Serve."""
    with _connect_lock:
        if not ray.is_initialized():
            ray.init(
                address=settings.address,
                namespace=settings.namespace,
                log_to_driver=False,  # replica logs stay in the cluster's log files
                include_dashboard=False if settings.address is None else None,
            )
        serve.start(proxy_location="Disabled")


def load_ray_engine(modality: Modality, spec: ModelSpec, settings: Settings) -> RayEngine:
    """The registry's loader for a ray-placed model. Blocks until its replicas run."""
    connect(settings.ray)
    app = app_name(spec.name, spec.ray)
    board = board_for(app, settings.ray.namespace)
    if settings.ray.deploy:
        _deploy(app, board, modality, spec, settings)
    elif serve.status().applications.get(app) is None:
        raise DeploymentFailed(
            f"Ray Serve application {app} is not deployed (serve deploy, a RayService, "
            "or an edge with --ray.deploy)"
        )
    _wait_running(app, settings.ray.deploy_timeout_s)
    return RayEngine(spec.name, app, serve.get_app_handle(app), board, settings.ray.poll_s)


def _deploy(app: str, board: Any, modality: Modality, spec: ModelSpec, settings: Settings) -> None:
    from genserve.server.ray_serve.apps import application

    # Replicas may start anywhere: give them the model store as an absolute path.
    remote = settings.model_copy(update={"model_store": settings.model_store.resolve()})
    changed = ray.get(board.record_config.remote(_digest(spec, remote)))
    status = serve.status().applications.get(app)
    if changed or status is None or status.status is ApplicationStatus.DEPLOY_FAILED:
        logger.info("deploying %s on Ray Serve as application %s", spec.name, app)
        target = serve.RunTarget(application(modality, spec, remote), app, route_prefix=None)
        try:
            serve.run_many([target], wait_for_applications_running=False)
        except BaseException:  # not deployed after all: the next edge must try again
            ray.get(board.record_config.remote(""))
            raise


# The settings a replica reads (an edge's port or data folder is not one of them): the
# model store and every section a spec reads, so no modality can be forgotten.
ENGINE_SETTINGS = (
    "model_store",
    *dict.fromkeys(section for spec in SPECS for section in spec.settings_sections),
)
REPLICA_SETTINGS: dict[str, Any] = {
    **dict.fromkeys(ENGINE_SETTINGS, True),
    "ray": {"namespace", "poll_s", "request_timeout_s"},  # not the address: edges differ
}


def _wait_running(app: str, timeout_s: float) -> None:
    """Until the application runs; DeploymentFailed when Serve gives up on it, or when it
    does not run in time (replicas that fit on no node wait for resources for ever)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        if status is not None and status.status is ApplicationStatus.RUNNING:
            return
        if status is not None and status.status is ApplicationStatus.DEPLOY_FAILED:
            logger.error("Ray Serve could not deploy %s: %s", app, status.message)
            raise DeploymentFailed(f"Ray Serve application {app}: {_last_line(status.message)}")
        if time.monotonic() > deadline:
            state = status.status.value if status is not None else "not found"
            raise DeploymentFailed(
                f"Ray Serve application {app} not running after "
                f"{timeout_s:.0f} s ({state}); see `serve status`"
            )
        time.sleep(DEPLOY_POLL_S)


def _digest(spec: ModelSpec, settings: Settings) -> str:
    """What the replicas are built from: same digest, nothing to redeploy."""
    text = spec.model_dump_json() + settings.model_dump_json(include=REPLICA_SETTINGS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _last_line(message: str) -> str:
    """The replica's exception line, without Serve's traceback around it."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else "failed"
