"""Small checks shared by the request converters; each raises InvalidArgument naming the field."""

from __future__ import annotations

import math
import secrets
from typing import Any, TypeVar

from genserve.server.errors import InvalidArgument

N = TypeVar("N", int, float)


def optional(request: Any, field: str, default: Any) -> Any:
    """A proto3 `optional` field's value, or the default when the caller left it unset."""
    return getattr(request, field) if request.HasField(field) else default


def check_prompt(field: str, prompt: str, max_chars: int) -> str:
    if not prompt.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(prompt) > max_chars:
        raise InvalidArgument(field, f"{len(prompt)} characters exceed the limit of {max_chars}")
    return prompt


def check_range(field: str, value: N, low: N, high: N) -> N:
    if isinstance(value, float) and math.isnan(value):
        raise InvalidArgument(field, f"must be between {low} and {high}, got NaN")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def check_size(width: int, height: int, min_side: int, max_side: int, max_pixels: int) -> None:
    for field, value in (("width", width), ("height", height)):
        check_range(field, value, min_side, max_side)
        if value % 8:
            raise InvalidArgument(field, f"must be a multiple of 8, got {value}")
    if width * height > max_pixels:
        raise InvalidArgument(
            "width", f"width x height = {width * height} pixels exceeds the limit of {max_pixels}"
        )


def seed_of(request: Any, default: int | None = None) -> int:
    """The caller's seed, else the model's default, else a fresh random one."""
    if request.HasField("seed"):
        return int(request.seed)
    return default if default is not None else secrets.randbits(63)
