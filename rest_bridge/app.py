"""The bridge app: the server's limits read once, one gRPC channel opened in the lifespan,
the routers, error handlers and the middlewares (observability, body caps, cancelling the
work of clients that left)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from genserve.bridge.auth import AuthMiddleware, BridgeAuth
from genserve.bridge.backend import Backend, BackendHolder, largest_request
from genserve.bridge.body_limit import BodyLimitMiddleware, body_caps
from genserve.bridge.disconnect import ClientDisconnectMiddleware
from genserve.bridge.errors import (
    BridgeError,
    bridge_error_handler,
    grpc_error_handler,
    unhandled_error_handler,
    validation_error_handler,
)
from genserve.bridge.limits import fetch_limits
from genserve.bridge.observability import BridgeMetrics, ObservabilityMiddleware
from genserve.bridge.routes_health import build_health_router
from genserve.bridge.routes_jobs import build_jobs_router
from genserve.bridge.routes_models import build_models_router
from genserve.bridge.routes_openai import UPLOAD_ROUTES, build_openai_router
from genserve.bridge.routes_seed import build_seed_router
from genserve.bridge.routes_videos import VIDEO_UPLOAD_ROUTES, build_videos_router
from genserve.bridge.server_link import channel_credentials, own_authorization
from genserve.bridge.settings import BridgeSettings
from genserve.server.auth.store import KeyStore


def create_app(settings: BridgeSettings) -> FastAPI:
    # Before the routes: their request schemas are built from what the server enforces.
    credentials = channel_credentials(settings.grpc_tls)
    limits = fetch_limits(
        settings.grpc_target,
        settings.timeouts.limits,
        credentials,
        own_authorization(settings.api_key),
    )
    auth = (
        BridgeAuth(KeyStore(settings.keys_file), settings.auth)
        if settings.keys_file is not None
        else None
    )
    holder = BackendHolder()
    metrics = BridgeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.current = Backend.connect(
            settings.grpc_target,
            credentials,
            settings.api_key,
            max_send_bytes=largest_request(limits.largest_upload()),
        )
        try:
            yield
        finally:
            await holder.current.close()
            holder.current = None

    app = FastAPI(
        title="genserve REST bridge",
        version="1.0.0",
        description="HTTP endpoints over the genserve gRPC server: the seed's routes, "
        "an OpenAI-compatible API, the models and their life cycle, health and metrics. "
        "Each request may name its model; the bounds stated here are the server's.",
        lifespan=lifespan,
    )
    app.include_router(build_seed_router(holder, limits, settings.timeouts, metrics))
    app.include_router(build_openai_router(holder, limits, settings.timeouts, metrics))
    app.include_router(build_jobs_router(holder, limits))
    app.include_router(build_videos_router(holder, limits))
    app.include_router(build_models_router(holder, settings))
    app.include_router(build_health_router(holder, settings, metrics))
    app.add_exception_handler(grpc.aio.AioRpcError, grpc_error_handler)
    app.add_exception_handler(BridgeError, bridge_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    # Outermost last: observability sees every answer, a 413 included, with its request ID.
    app.add_middleware(ClientDisconnectMiddleware)
    caps = body_caps(limits, {**UPLOAD_ROUTES, **VIDEO_UPLOAD_ROUTES})
    app.add_middleware(BodyLimitMiddleware, caps=caps)
    app.add_middleware(AuthMiddleware, auth=auth)  # before reading any body
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, router_app=app.router)
    app.state.metrics = metrics
    app.state.limits = limits
    app.state.auth = auth
    return app
