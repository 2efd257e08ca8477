"""The server's limits, read once from ListModels when the app is built, so that the
request schemas, and the OpenAPI document, state the bounds the server enforces.

The server publishes each modality's limits under its spec's name (ModelService.ListModels
`limits`); they are read back with the spec's own limits type, whose defaults are the
server's. A modality the server does not publish, or a server that cannot be reached in
time, leaves those defaults, with a warning: the server checks every request again, so a
tighter server still wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import struct_pb2
from pydantic import BaseModel, ValidationError

from genserve.contract import SPECS, ModalitySpec
from genserve.contract.limits import limits_from_struct
from genserve.v1 import models_pb2, models_pb2_grpc

logger = logging.getLogger(__name__)

L = TypeVar("L", bound=BaseModel)
L_co = TypeVar("L_co", bound=BaseModel, covariant=True)


class HasLimits(Protocol[L_co]):
    """What `of` reads of a spec: a ModalitySpec[..., TextLimits] gives TextLimits. (A
    protocol of its own keeps `of` typed where mypy does not follow the contract.)"""

    @property
    def name(self) -> str: ...

    @property
    def limits_type(self) -> type[L_co]: ...


class ServerLimits:
    """Per spec, an instance of its limits type: `limits.of(spec)`."""

    def __init__(self, by_name: Mapping[str, BaseModel]) -> None:
        self._by_name = {
            spec.name: by_name[spec.name] if spec.name in by_name else spec.limits_type()
            for spec in SPECS
        }

    @classmethod
    def defaults(cls) -> ServerLimits:
        return cls({})

    @classmethod
    def from_dict(cls, published: Mapping[str, Any]) -> ServerLimits:
        """ValidationError when a modality's limits do not read as its limits type; names
        the bridge has no spec for (a newer server's) are left out."""
        return cls(
            {
                spec.name: spec.limits_type.model_validate(published[spec.name])
                for spec in SPECS
                if spec.name in published
            }
        )

    def of(self, spec: HasLimits[L]) -> L:
        limits = self._by_name[spec.name]
        assert isinstance(limits, spec.limits_type)
        return limits

    def upload_bytes(self, spec: ModalitySpec[Any, Any]) -> int:
        """The largest upload the spec's request may carry; 0 for specs without one."""
        return spec.upload.max_bytes(self.of(spec)) if spec.upload is not None else 0

    def largest_upload(self) -> int:
        return max(self.upload_bytes(spec) for spec in SPECS)


def limits_from_pb(limits: struct_pb2.Struct) -> ServerLimits:
    return ServerLimits.from_dict(limits_from_struct(limits))


def fetch_limits(
    target: str,
    timeout: float,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ServerLimits:
    """Blocking, for create_app: the routes (and their schemas) exist before the lifespan
    opens the async channel. Waits for the server to listen, up to `timeout` seconds."""
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        try:
            reply = stub.ListModels(
                models_pb2.ListModelsRequest(),
                wait_for_ready=True,
                timeout=timeout,
                metadata=metadata,
            )
            limits = limits_from_pb(reply.limits)
            missing = [spec.name for spec in SPECS if spec.name not in reply.limits.fields]
            if missing:
                logger.warning("the server publishes no limits for %s: defaults", missing)
            logger.info("request bounds: the server's limits, read from %s", target)
            return limits
        except grpc.RpcError as error:
            # grpc's blocking calls raise an RpcError that is also a grpc.Call
            call: Any = error
            reason = f"{call.code().name}: {call.details()}"
        except ValidationError as error:
            reason = f"unreadable limits: {error}"
    logger.warning(
        "could not read the server's limits from %s (%s); the API documents the server's "
        "default limits, and the server still enforces its own",
        target,
        reason,
    )
    return ServerLimits.defaults()
