"""Assembles the gRPC server: servicers, interceptors, health, reflection, lifecycle.

Lifecycle: start() binds and reports NOT_SERVING; load_models() preloads and flips each
modality's health status; stop() reports NOT_SERVING, stops accepting calls and lets
in-flight streams drain for the grace period before cancelling them.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from genserve.contract import SPECS, Modality, spec_for
from genserve.server.auth.exposure import bind_host, is_loopback, server_credentials
from genserve.server.auth.interceptor import AuthInterceptor
from genserve.server.auth.wiring import build_guard, watch_keys
from genserve.server.engine.contract import Engine
from genserve.server.health_watch import watch_health
from genserve.server.interceptors import (
    ErrorInterceptor,
    RequestIdInterceptor,
    TelemetryInterceptor,
)
from genserve.server.interceptors.telemetry import CallRecord, log_access
from genserve.server.jobs.wiring import JOB_SERVICE, Jobs, build_jobs
from genserve.server.manifest import Manifest, ModelSpec
from genserve.server.metrics import ServerMetrics
from genserve.server.modalities import limits_of, loader_for
from genserve.server.reflection import enable_reflection
from genserve.server.registry import Loader, LoaderFor, ModelEntry, ModelRegistry
from genserve.server.servicers.models import ModelServicer
from genserve.server.servicers.registration import add_servicer, servicer_for
from genserve.server.settings import Settings
from genserve.server.usage_log import UsageLog
from genserve.server.worker.process_engine import ProcessEngine
from genserve.v1 import models_pb2, models_pb2_grpc

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL = ""  # the health service name that stands for the whole server
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name

MiB = 1024 * 1024
RECORD_WAIT_S = 1.0  # after the grace period, for cancelled calls to write their rows
ENGINE_STOP_WAIT_S = 1.0  # then for model threads to finish their step


def model_health_name(entry: ModelEntry) -> str:
    """One health status per model: `<service>/<model name>`."""
    return f"{spec_for(entry.modality).service}/{entry.name}"


def default_loader_for(settings: Settings) -> LoaderFor:
    """The engine loader for a model: its modality's spec, its engine kind, these settings."""

    def engine_loader(modality: Modality, spec: ModelSpec) -> Loader | None:
        load = loader_for(modality, spec)
        if load is None:
            return None
        if spec.placement == "ray":  # the same engine, built in Ray Serve replicas
            return partial(_ray_engine, modality, settings=settings)
        if spec.placement == "process":  # the same engine, built in a worker process
            return partial(ProcessEngine, modality, settings=settings)
        return lambda model: load(model, settings)

    return engine_loader


def max_receive_bytes(settings: Settings) -> int:
    """The largest request: the setting, or more where a spec's published upload limit
    needs it (a limit the transport refused would publish a bound nobody can reach)."""
    uploads = [
        spec.upload.max_bytes(limits_of(spec, settings)) + MiB
        for spec in SPECS
        if spec.upload is not None
    ]
    return max([settings.max_receive_message_mb * MiB, *uploads])


def _ray_engine(modality: Modality, spec: ModelSpec, settings: Settings) -> Engine[Any, Any]:
    from genserve.server.ray_serve.cluster import load_ray_engine  # imports ray: only if used

    return load_ray_engine(modality, spec, settings)


class GenServeServer:
    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        loader_for: LoaderFor | None = None,
    ) -> None:
        self.settings = settings
        self.registry = ModelRegistry(
            manifest,
            loader_for if loader_for is not None else default_loader_for(settings),
            model_store=settings.model_store,
            memory_budget_bytes=settings.memory_budget_mb * MiB,
        )
        self.registry.on_change(self._report_health)
        self.usage_log = UsageLog(settings.usage_db_path)
        self.metrics = ServerMetrics(self.registry)
        self.health = health.aio.HealthServicer()
        self._stopping = False
        self.guard = build_guard(settings, self.registry)
        self._keys_watch: asyncio.Task[None] | None = None
        self._health_watch: asyncio.Task[None] | None = None
        self._telemetry = TelemetryInterceptor(
            [log_access, self.usage_log, self.metrics],
            self.metrics.track_in_flight,
            stopping=lambda: self._stopping,
        )
        self.jobs: Jobs | None = None
        if settings.jobs.enabled:
            self.jobs = build_jobs(settings, self.registry, self._record_job_run)
            self.metrics.registry.register(self.jobs.metrics)
        self.port = 0
        self.metrics_port: int | None = None
        self._server = grpc.aio.server(
            interceptors=[
                RequestIdInterceptor(),
                self._telemetry,
                ErrorInterceptor(),
                # Innermost: a refusal still gets its request ID, status and usage row.
                AuthInterceptor(self.guard, settings.auth.open_reflection, settings.log_prompts),
            ],
            options=[
                ("grpc.max_receive_message_length", max_receive_bytes(settings)),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._add_servicers()

    def _add_servicers(self) -> None:
        server = self._server
        for spec in SPECS:
            add_servicer(spec, servicer_for(spec, self.registry, self.settings), server)
        models_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.registry, self.settings), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.jobs is not None:
            self.jobs.add_to(server)
        if self.settings.reflection:
            names = [
                *(spec.service for spec in SPECS),
                MODEL_SERVICE,
                *([JOB_SERVICE] if self.jobs is not None else []),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ]
            enable_reflection(names, server)

    async def start(self) -> int:
        """Bind and start answering; every service reports NOT_SERVING until loaded."""
        settings = self.settings
        host = bind_host(settings.host, self.guard.enabled, settings.insecure_no_auth, "gRPC")
        address = f"{host}:{settings.port}"
        credentials = server_credentials(settings.tls)
        if credentials is not None:
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        names = [OVERALL, *(spec.service for spec in SPECS)]
        names += [model_health_name(entry) for entry in self.registry.entries()]
        for name in names:
            await self.health.set(name, NOT_SERVING)
        await self._server.start()
        logger.info(
            "gRPC listening on %s:%d (%s, %s)",
            host,
            self.port,
            "TLS" if credentials is not None else "plaintext",
            "auth on" if self.guard.enabled else "no auth",
        )
        if self.guard.enabled and credentials is None and not is_loopback(host):
            logger.warning("API keys cross the network in clear: give --tls.cert-file/key-file")
        if settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(settings.metrics_host, settings.metrics_port)
            logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, self.metrics_port)
        store = self.guard.store
        if store is not None and settings.auth.watch_s > 0:
            self._keys_watch = asyncio.create_task(watch_keys(store, settings.auth.watch_s))
        return self.port

    def reload_keys(self) -> bool:
        """Reads the keys file again (SIGHUP): added keys work, revoked ones stop."""
        return self.guard.store.reload() if self.guard.store is not None else False

    async def load_models(self) -> None:
        """Preload, then report every model's and every service's health, then the server's."""
        await self.registry.preload()
        for entry in self.registry.entries():
            await self._report_health(entry)
        for spec in SPECS:
            default = self.registry.default_entry(Modality(spec.name))
            if default is None or not default.ready:
                detail = f"{default.state}: {default.detail}" if default else "no model"
                logger.warning("%s is NOT_SERVING: %s", spec.service, detail)
        if self.jobs is not None:
            self.jobs.runner.start()  # after the models: recovered jobs run at once
        await self.health.set(OVERALL, SERVING)
        self._health_watch = asyncio.create_task(watch_health(self.registry, self._report_health))

    async def _report_health(self, entry: ModelEntry) -> None:
        """A model's own status, and its service's: SERVING while its default model can
        serve (loaded, loadable on use, or loaded per request)."""
        await self.health.set(model_health_name(entry), SERVING if entry.ready else NOT_SERVING)
        default = self.registry.default_entry(entry.modality)
        if default is entry:
            service = spec_for(entry.modality).service
            await self.health.set(service, SERVING if entry.ready else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> bool:
        """NOT_SERVING first, then stop accepting, then drain in-flight calls; after the
        grace period, cancel the rest, write their usage rows, stop the model threads.
        False when a model thread had to be abandoned."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        for task in (self._keys_watch, self._health_watch):
            if task is not None:
                task.cancel()
        logger.info("stopping: draining in-flight calls for up to %.1f s", grace)
        # Calls still running when the grace period ends are cancelled by us, and their
        # callers see UNAVAILABLE: from then on, telemetry records that code.
        asyncio.get_running_loop().call_later(grace, self._mark_stopping)
        await self._server.stop(grace)
        self._mark_stopping()
        # The cancelled calls finish their telemetry on the loop after stop() returns:
        # wait for their usage rows before the log closes. Then stop the model threads.
        if not await self._telemetry.wait_recorded(RECORD_WAIT_S):
            logger.warning("some calls were not recorded within %.1f s", RECORD_WAIT_S)
        if self.jobs is not None:  # running jobs stay running in the store: they run again
            await self.jobs.runner.close()
        engines_stopped = self.registry.close(ENGINE_STOP_WAIT_S)
        if not engines_stopped:
            logger.warning("a model thread is still running; it is abandoned")
        self.usage_log.close()  # last: a final flush of every row
        self.metrics.close()
        logger.info("stopped")
        return engines_stopped

    def _record_job_run(self, record: CallRecord) -> None:
        """A job's run is a call of its own in the access log, the usage log and metrics."""
        for sink in (log_access, self.usage_log, self.metrics):
            sink(record)

    def _mark_stopping(self) -> None:
        self._stopping = True

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
