"""Each spec's service on the gRPC server, by its descriptor: no generated servicer base
is needed, so a new modality's service appears from its spec alone."""

from __future__ import annotations

from typing import Any

import grpc

from genserve.contract import Interaction, ModalitySpec
from genserve.contract.spec import import_path
from genserve.server.registry import ModelRegistry
from genserve.server.servicers.stream import StreamServicer
from genserve.server.settings import Settings


def servicer_for(
    spec: ModalitySpec[Any, Any], registry: ModelRegistry, settings: Settings
) -> object:
    if spec.servicer is not None:
        servicer: object = import_path(spec.servicer)(registry, settings)
        return servicer
    return StreamServicer(spec, registry, settings)


def add_servicer(spec: ModalitySpec[Any, Any], servicer: object, server: grpc.aio.Server) -> None:
    handler_for = (
        grpc.unary_unary_rpc_method_handler
        if spec.interaction is Interaction.UNARY
        else grpc.unary_stream_rpc_method_handler
    )
    handler = handler_for(
        getattr(servicer, spec.method),
        request_deserializer=spec.request_type.FromString,  # type: ignore[attr-defined]
        response_serializer=spec.event_type.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(spec.service, {spec.method: handler})
    server.add_generic_rpc_handlers((generic,))
