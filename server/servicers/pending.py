"""Servicers for modalities this version does not serve yet: UNIMPLEMENTED, with a reason.

Registering them (rather than leaving the methods unknown) keeps the full contract
visible through reflection and gives callers a message instead of a bare status.
"""

from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from server.errors import Unimplemented


def pending_servicer(base: type[Any], modality: str, method: str = "Generate") -> Any:
    async def not_yet(self: Any, request: Any, context: ServicerContext[Any, Any]) -> None:
        raise Unimplemented(f"{modality} is not implemented in this version")

    return type(f"Pending{base.__name__}", (base,), {method: not_yet})()
