"""A route handler whose parameters FastAPI sees with other annotations.

FastAPI reads a handler's annotations to validate and document its input. The bridge's
request models are built at start from the server's limits, so no annotation written in
the source can name them; mypy, for its part, needs an annotation it can check. The
handler is written against the models' base class (what mypy checks), and wrapped in a
Reannotated that names the built models (what FastAPI reads).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Reannotated(Generic[P, R]):
    def __init__(self, handler: Callable[P, Awaitable[R]], **annotations: Any) -> None:
        signature = inspect.signature(handler)
        unknown = set(annotations) - set(signature.parameters)
        assert not unknown, f"{handler.__name__} has no parameter {unknown}"
        # inspect.signature (which FastAPI calls) reads this attribute first.
        self.__signature__ = signature.replace(
            parameters=[
                p.replace(annotation=annotations.get(p.name, p.annotation))
                for p in signature.parameters.values()
            ]
        )
        self.__name__ = handler.__name__
        self.__doc__ = handler.__doc__
        self._handler = handler

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._handler(*args, **kwargs)
