"""A call's arguments to the proto request, by the spec: no per-modality code.

The SDK's methods are typed with the ParamSpec of the generated request class's
`__init__` (its .pyi), whose parameters are the proto's fields in declaration order: so
positional arguments map onto the descriptor's fields in that order, keywords by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from genserve.contract import InvalidField, ModalitySpec

from .errors import InvalidArgumentError

# Per-call options, set with `.with_options(...)`: a keyword of one of these names is a
# mistake worth a precise message (it would otherwise be "no field 'timeout'").
OPTION_NAMES = frozenset({"timeout", "request_id", "on_progress"})


def parameter_names(spec: ModalitySpec[Any, Any]) -> tuple[str, ...]:
    """What a call takes, in order: every field of the request, `model` included."""
    return tuple(f.name for f in spec.request_descriptor.fields)


def build_request(
    spec: ModalitySpec[Any, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Message:
    names = parameter_names(spec)
    if len(args) > len(names):
        raise TypeError(f"{spec.name}: takes at most {len(names)} positional arguments")
    fields = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name in fields:
            raise TypeError(f"{spec.name}: got multiple values for {name!r}")
        if name in OPTION_NAMES:
            raise TypeError(f"{name!r} is a call option: use .with_options({name}=...)")
        fields[name] = value
    if spec.upload is not None:
        fields[spec.upload.field] = _read_upload(fields.get(spec.upload.field))
    try:
        return spec.fields_to_request(fields)
    except InvalidField as error:  # e.g. format="gif": caught before the call
        raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(error), None) from None


def _read_upload(value: Any) -> Any:
    """An upload given as a path (str or Path) is read here; bytes pass as they are."""
    if isinstance(value, str | Path):
        return Path(value).read_bytes()
    return value
