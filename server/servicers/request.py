"""What every Generate does first, whatever the modality: resolve the model by name,
validate the request over that model's defaults, price it and admit it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from grpc.aio import ServicerContext
from pydantic import BaseModel

from genserve.contract import Modality, ModalitySpec
from genserve.contract.spec import InvalidField, import_path
from genserve.server.admission import Cost, admit
from genserve.server.auth.caller import charge_caller
from genserve.server.errors import InvalidArgument
from genserve.server.modalities import defaults_for, limits_of
from genserve.server.registry import ModelEntry, ModelRegistry
from genserve.server.settings import Settings


def requested_model(request: Any) -> str | None:
    """The request's `model` field; None (the modality's default) when unset or empty."""
    return request.model or None if request.HasField("model") else None


def fresh_seed() -> int:
    return secrets.randbits(63)


class RequestConverter:
    """Proto request -> the modality's validated params, for one spec and its models.

    The bounds come from the spec and the settings; a model's manifest defaults fill what
    the caller left unset; the spec's server hook (an upload's decoding) runs last."""

    def __init__(
        self, spec: ModalitySpec[Any, Any], registry: ModelRegistry, settings: Settings
    ) -> None:
        self.spec = spec
        self.limits = limits_of(spec, settings)
        self._registry = registry
        self._defaults = {
            entry.name: checked_defaults(
                spec, entry.name, defaults_for(spec, entry.spec), self.limits
            )
            for entry in registry.entries(Modality(spec.name))
        }
        self._hook: Callable[[Any, Any], Any] | None = None  # imported on first use

    def resolve(self, request: Message) -> tuple[ModelEntry, BaseModel]:
        """The model a request names (NOT_FOUND for an unknown one) and its defaults."""
        entry = self._registry.resolve(Modality(self.spec.name), requested_model(request))
        return entry, self._defaults[entry.name]

    async def params(self, request: Message, defaults: BaseModel) -> Any:
        try:
            fields = self.spec.request_to_fields(request)
            params = self.spec.params_from(fields, defaults, self.limits, fresh_seed)
            if self.spec.server_hook is None:
                return params
            if self._hook is None:
                self._hook = import_path(self.spec.server_hook)
            # Off the event loop: decoding an upload can take a while.
            return await asyncio.to_thread(self._hook, params, self.limits)
        except InvalidField as invalid:
            raise InvalidArgument.of(invalid) from None


def checked_defaults(
    spec: ModalitySpec[Any, Any], model: str, defaults: BaseModel, limits: Any
) -> BaseModel:
    """A model's manifest defaults within the server's bounds, or the server does not start."""
    try:
        spec.check_defaults(defaults, limits)
    except InvalidField as invalid:
        raise ValueError(f"model {model}: [{spec.name}.defaults] {invalid}") from None
    return defaults


def admit_request(
    spec: ModalitySpec[Any, Any], entry: ModelEntry, params: Any, context: ServicerContext[Any, Any]
) -> Cost:
    """Prices the request and refuses it when it is over the model's caps or would not
    finish in the time it has (see admission.py); charges the caller's key budget."""
    cost = spec.cost(params)
    admit(entry.name, cost, entry.spec.limits, entry.speed, context.time_remaining())
    charge_caller(Modality(spec.name), cost)  # the caller's key budget, in its units
    return cost


def learn_speed(entry: ModelEntry, cost: Cost, inference_ms: float) -> None:
    entry.speed.observe(cost.units, inference_ms / 1000)
