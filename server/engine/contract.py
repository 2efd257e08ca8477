"""The engine contract: what the registry and the servicers need from any engine.

An engine takes a plain request and streams plain events; it knows nothing of gRPC or
HTTP, which is what lets one run in process, behind an upstream or in another process.
Closing the iterator that `generate` returns is the cancellation: the engine stops that
request's work within one step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

# How long an engine's close() waits by default for its model thread to finish a step.
CLOSE_WAIT_S = 10.0

R_contra = TypeVar("R_contra", contravariant=True)
E_co = TypeVar("E_co", covariant=True)


@dataclass(frozen=True)
class EngineStats:
    queued: int  # accepted, waiting for the model
    in_flight: int  # running on the model now
    cancelled: int  # requests abandoned part-way because their caller left
    tokens_generated: int = 0  # text engines: tokens decoded so far, cancelled requests too
    steps: int = 0  # media engines: model steps run so far (denoising), cancelled ones too


@runtime_checkable
class Engine(Protocol[R_contra, E_co]):
    name: str
    memory_bytes: int  # weights and buffers it holds, for the registry's budget

    def generate(self, request: R_contra) -> AsyncIterator[E_co]:
        """Stream the result. Raises ServingError subclasses for requests the engine
        refuses (InvalidArgument, ResourceExhausted when its queue is full)."""
        ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running; False on timeout."""
        ...

    def close(self, wait_s: float = ...) -> bool:
        """Stop running work (at its next step) and release the model, waiting up to
        `wait_s` for the model's threads to end; True once they have."""
        ...


def module_bytes(*objects: Any) -> int:
    """Bytes of the torch parameters and buffers reachable from the objects: modules,
    diffusers pipelines (their components) and plain holders of either."""
    import torch

    seen: set[int] = set()
    total = 0

    def visit(obj: Any, depth: int) -> None:
        nonlocal total
        if obj is None or id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for tensor in (*obj.parameters(), *obj.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
            return
        components = getattr(obj, "components", None)  # a diffusers pipeline
        if isinstance(components, dict):
            children = list(components.values())
        elif hasattr(obj, "__dict__"):
            children = list(vars(obj).values())
        else:
            return
        for child in children:
            visit(child, depth + 1)

    for obj in objects:
        visit(obj, 0)
    return total
