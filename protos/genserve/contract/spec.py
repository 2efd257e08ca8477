"""What a modality is, in one place: `ModalitySpec`, and the generic conversions built on it.

A spec's `params_type` is a pydantic model of the request's fields (the proto's names),
with their types, defaults and descriptions; its `bounds` say, from the modality's limits,
how far each field may go. From those two come the model the server validates with, the
request schema the bridge publishes, the CLI's flags and the UI's form. Requests cross
the wire as protobuf: `request_to_fields` and `fields_to_request` convert at the edges,
enums by their short names (`IMAGE_FORMAT_JPEG` is "jpeg").
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Generic, Literal, ParamSpec, TypeVar, get_args

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

P = ParamSpec("P")
L = TypeVar("L", bound=BaseModel)

MODEL_FIELD = "model"  # every request's model name: resolved by the registry, not a parameter
NOT_BLANK = r"\S"  # prompts must hold something besides white space


class Interaction(StrEnum):
    TEXT_STREAM = "text_stream"  # pieces of text (deltas, segments), then a final event
    MEDIA_STREAM = "media_stream"  # header, progress, chunks of a file, then a final event
    UNARY = "unary"  # one request, one reply


class InvalidField(ValueError):
    """A request field out of bounds: the message names the field and the limit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Cost:
    """A request's price in its modality's units, for admission and key budgets."""

    units: float
    formula: str  # how it was counted, for messages: "width x height x steps"
    pixels: int | None = None
    # False for work that stops cleanly at any step and is useful cut short (a text
    # stream): its units are capped, but a deadline is no reason to refuse it.
    timed: bool = True


@dataclass(frozen=True)
class Upload:
    """A request field that carries a file (HTTP: a multipart part)."""

    field: str
    description: str
    max_bytes: Callable[[Any], int]  # from the modality's limits


@dataclass(frozen=True, eq=False)  # hashed by identity: its bounded models are cached
class ModalitySpec(Generic[P, L]):
    name: str  # one word per concept; also the settings section and the key-file name
    aliases: tuple[str, ...]
    description: str
    proto_module: Any  # the generated *_pb2 module
    service_name: str  # e.g. "ImageService"
    method: str  # "Generate" (streams) or "Embed" (unary)
    # The proto request class: typed as a callable so that the SDK's methods take its
    # keyword arguments (names and types from the generated .pyi).
    request_type: Callable[P, Message]
    interaction: Interaction
    params_type: type[BaseModel]
    limits_type: type[L]
    settings_sections: tuple[str, ...]  # the Settings sections merged into limits_type
    bounds: Callable[[L], Mapping[str, Mapping[str, Any]]]  # field -> pydantic Field kwargs
    cost: Callable[[Any], Cost]  # prices validated params
    mime_types: tuple[str, ...]
    http_path: str
    sdk_timeout_s: float
    engines: Mapping[str, str]  # engine kind -> "module:function", imported on first use
    default_engine: str
    upload: Upload | None = None
    attachment: bool = False  # HTTP: offered as a download rather than shown inline
    piece: str = ""  # text streams: the event's oneof case that carries text
    # Text streams: the whole text from its pieces' texts (deltas join as they are).
    join: Callable[[Iterable[str]], str] = "".join
    # Checks across fields (width x height) after the per-field bounds; InvalidField.
    check: Callable[[Any, L], None] | None = None
    # Streams other than media: the engine's plain events to protobuf.
    event_to_pb: Callable[[Any], Message] | None = None
    # A server-side check that needs the server's libraries (decoding an upload): an
    # import path to (params, limits) -> params, InvalidField on a bad request.
    server_hook: str | None = None
    # The servicer class, as an import path, where the server's generic one
    # (servicers/stream.py) does not fit: text's chat turns, embeddings' unary reply.
    servicer: str | None = None
    # A small valid request (its fields), for documentation and the contract tests.
    example: Callable[[], Mapping[str, Any]] = dict
    seeded: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeded", "seed" in self.params_type.model_fields)

    # -- the proto side ------------------------------------------------------------------

    @property
    def request_descriptor(self) -> Descriptor:
        descriptor: Descriptor = self.request_type.DESCRIPTOR  # type: ignore[attr-defined]
        return descriptor

    @property
    def service(self) -> str:
        """The full gRPC service name, as health, reflection and keys know it."""
        full_name: str = self.proto_module.DESCRIPTOR.services_by_name[self.service_name].full_name
        return full_name

    @property
    def rpc_path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def event_type(self) -> type[Message]:
        method = self.proto_module.DESCRIPTOR.services_by_name[self.service_name].methods_by_name[
            self.method
        ]
        return message_class(method.output_type)

    @property
    def request_fields(self) -> tuple[str, ...]:
        """The request's fields, less `model`: what a caller sets."""
        return tuple(f.name for f in self.request_descriptor.fields if f.name != MODEL_FIELD)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def request_to_fields(self, request: Message) -> dict[str, Any]:
        """The fields the caller set, as plain Python; unset ones are left out."""
        return message_to_fields(request, skip=frozenset({MODEL_FIELD}))

    def fields_to_request(self, fields: Mapping[str, Any]) -> Message:
        """Plain fields (None: unset) to the proto request."""
        build: Callable[..., Message] = self.request_type
        return build(**fields_to_proto_kwargs(self.request_descriptor, fields))

    # -- limits and parameters -----------------------------------------------------------

    def limits_from(self, sections: Mapping[str, BaseModel]) -> L:
        """This modality's limits from the settings sections it reads."""
        merged: dict[str, Any] = {}
        for section in self.settings_sections:
            merged |= sections[section].model_dump()
        return self.limits_type.model_validate(merged)

    def params_model(self, limits: L) -> type[BaseModel]:
        """The bounded params_type: what the server validates a whole request with."""
        return _bounded(self, _freeze(limits), partial=False)

    def request_model(self, limits: L, base: type[BaseModel] = BaseModel) -> type[BaseModel]:
        """The request's fields, bounded, unset ones None (the server applies its
        defaults): the bridge's schemas, the UI's form."""
        return _bounded(self, _freeze(limits), partial=True, base=base)

    def defaults_model(self) -> type[BaseModel]:
        """A model's `[<modality>.defaults]`: any params_type field a default can stand
        for, none required. A request field without presence (`prompt`, an upload) is
        always sent, so a default for it would never apply: it is not one."""
        return _defaults_model(self.params_type, frozenset(self._always_sent()))

    def _always_sent(self) -> list[str]:
        return [
            f.name
            for f in self.request_descriptor.fields
            if not f.has_presence and not _is_repeated(f) and f.enum_type is None
        ]

    def check_defaults(self, defaults: BaseModel, limits: L) -> None:
        """A model's defaults within the bounds (InvalidField naming the field otherwise):
        a bad manifest fails when the server starts, not at every request."""
        model = self.params_model(limits)
        for name, value in defaults.model_dump(exclude_none=True).items():
            info = model.model_fields[name]
            try:
                field: Any = Annotated[info.annotation, info]
                TypeAdapter(field).validate_python(value)
            except ValidationError as error:
                first = error.errors(include_url=False)[0]
                problem = _problem(first, self.bounds(limits).get(name, {}))
                raise InvalidField(name, problem) from None

    def params_from(
        self,
        fields: Mapping[str, Any],
        defaults: BaseModel,
        limits: L,
        fresh_seed: Callable[[], int],
    ) -> BaseModel:
        """Validates the caller's fields over the model's defaults; InvalidField else."""
        merged = defaults.model_dump(exclude_none=True) | dict(fields)
        if self.seeded and merged.get("seed") is None:
            merged["seed"] = fresh_seed()
        try:
            checked = self.params_model(limits).model_validate(merged)
        except ValidationError as error:
            raise invalid_field(error, self.bounds(limits)) from None
        # As the plain params_type (picklable by name, for Ray and worker processes).
        params = self.params_type.model_construct(**dict(checked))
        if self.check is not None:
            self.check(params, limits)
        return params

    def engine_loader(self, kind: str) -> Callable[..., Any] | None:
        path = self.engines.get(kind)
        return import_path(path) if path is not None else None


def import_path(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    loader: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return loader


# -- protobuf <-> plain ----------------------------------------------------------------


def message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def enum_names(enum: Any) -> dict[int, str]:
    """Short names of an enum's values: IMAGE_FORMAT_JPEG -> "jpeg"; 0 (unspecified) out."""
    prefix = _common_prefix([v.name for v in enum.values])
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0}


def _common_prefix(names: list[str]) -> str:
    first, *rest = names
    length = len(first)
    for name in rest:
        while not name.startswith(first[:length]):
            length -= 1
    return first[: first.rfind("_", 0, length) + 1]


def enum_values(enum: Any) -> dict[str, int]:
    return {name: number for number, name in enum_names(enum).items()}


def message_to_fields(message: Message, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        name = descriptor.name
        if name in skip:
            continue
        value = getattr(message, name)
        if _is_repeated(descriptor):
            if not value:
                continue
            if descriptor.message_type is not None:
                fields[name] = [message_to_fields(item) for item in value]
            else:
                fields[name] = list(value)
            continue
        if descriptor.has_presence and not message.HasField(name):
            continue
        if descriptor.enum_type is not None:
            if value == 0:
                continue  # unspecified: the default
            names = enum_names(descriptor.enum_type)
            if value not in names:
                raise InvalidField(name, f"must be one of {', '.join(names.values())}, got {value}")
            value = names[value]
        elif descriptor.message_type is not None:
            value = message_to_fields(value)
        fields[name] = value
    return fields


def fields_to_proto_kwargs(descriptor: Descriptor, fields: Mapping[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    by_name = descriptor.fields_by_name
    for name, value in fields.items():
        if value is None:
            continue
        if name not in by_name:
            raise TypeError(f"{descriptor.name} has no field {name!r}")
        field_descriptor = by_name[name]
        if field_descriptor.enum_type is not None and isinstance(value, str):
            value = _enum_number(name, field_descriptor.enum_type, value)
        kwargs[name] = value
    return kwargs


def _enum_number(field: str, enum: Any, value: str) -> int:
    """An enum value by its short name ("jpeg") or its full one ("IMAGE_FORMAT_JPEG", which
    the generated .pyi types allow)."""
    short = enum_values(enum)
    full = {v.name: v.number for v in enum.values if v.number != 0}
    number = short.get(value.lower(), full.get(value))
    if number is None:
        raise InvalidField(field, f"must be one of {', '.join(short)}, got {value!r}")
    return number


def _is_repeated(descriptor: Any) -> bool:
    return bool(descriptor.is_repeated)


# -- bounded models --------------------------------------------------------------------


RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
)
SIZE_ERRORS = frozenset(
    {
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
        "bytes_too_long",
        "bytes_too_short",
    }
)


def invalid_field(error: ValidationError, bounds: Mapping[str, Mapping[str, Any]]) -> InvalidField:
    """The first problem pydantic found, as the field's name and what it must be, in the
    words of the field's bounds: "must be between 1 and 100, got 0"."""
    first = error.errors(include_url=False)[0]
    location = first["loc"]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location).lstrip(".")
    bound: Mapping[str, Any] = bounds.get(str(location[0]), {}) if location else {}
    if len(location) == 2 and isinstance(location[1], int):
        bound = bound.get("items", {})  # an element of a list
    return InvalidField(name or "request", _problem(first, bound))


def problem_of(error: Any) -> str:
    """One pydantic error in the contract's words, from what the error itself says (its
    ctx holds the bound it broke): for layers that validate with the specs' models."""
    return _problem(error, error.get("ctx") or {})


def _problem(error: Any, bound: Mapping[str, Any]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NOT_BLANK:
        return "must not be empty"
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected'].replace(' or ', ', ')}, got {value!r}"
    if kind == "multiple_of":
        return f"must be a multiple of {bound.get('multiple_of')}, got {value}"
    if kind in RANGE_ERRORS:
        return f"must be {_range(bound)}, got {_shown(value)}"
    if kind in SIZE_ERRORS and isinstance(value, str | bytes | list):
        return _size_problem(kind, value, bound)
    message: str = error["msg"].removeprefix("Value error, ")
    return message[0].lower() + message[1:]


def _range(bound: Mapping[str, Any]) -> str:
    low, high = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
    if low is None or high is None:
        return f"at least {low}" if high is None else f"at most {high}"
    if "gt" in bound or "lt" in bound:
        return f"in {'(' if 'gt' in bound else '['}{low}, {high}{')' if 'lt' in bound else ']'}"
    return f"between {low} and {high}"


def _shown(value: Any) -> str:
    return "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)


def _size_problem(kind: str, value: str | bytes | list[Any], bound: Mapping[str, Any]) -> str:
    unit = (
        "characters" if isinstance(value, str) else "bytes" if isinstance(value, bytes) else "items"
    )
    low, high, size = bound.get("min_length"), bound.get("max_length"), len(value)
    if isinstance(value, str) and low and high:
        return f"must be {low} to {high} characters long, got {size}"
    if kind.endswith("too_short"):
        return "must not be empty" if low == 1 else f"must hold at least {low} {unit}, got {size}"
    if isinstance(value, list):
        return f"at most {high} items, got {size}"
    return f"{size} {unit} exceed the limit of {high}"


def _freeze(limits: BaseModel) -> tuple[type[BaseModel], str]:
    """A hashable key for a limits object (the bounded models are built once per limits)."""
    return type(limits), limits.model_dump_json()


@cache
def _bounded_cached(
    spec: ModalitySpec[Any, Any], key: tuple[type[BaseModel], str], partial: bool, base: type
) -> type[BaseModel]:
    limits = key[0].model_validate_json(key[1])
    bounds = spec.bounds(limits)
    request_fields = set(spec.request_fields)
    definitions: dict[str, Any] = {}
    for name, info in spec.params_type.model_fields.items():
        if partial and name not in request_fields:
            continue  # a model-level setting (a manifest default), not a request field
        bound = dict(bounds.get(name, {}))
        description = bound.pop("description", None) or info.description
        annotation = _bounded_annotation(info.annotation, bound)
        if partial and not info.is_required():
            annotation = annotation | None  # type: ignore[operator]
            bound["default"] = None
        elif info.default_factory is not None:
            bound["default_factory"] = info.default_factory
        else:
            bound["default"] = info.default if not info.is_required() else ...
        definitions[name] = (annotation, Field(description=description, **bound))
    title = f"{spec.name.capitalize()}{'Request' if partial else 'Params'}"
    if partial:
        return create_model(title, __base__=base, **definitions)
    return create_model(title, __base__=spec.params_type, **definitions)


def _bounded(
    spec: ModalitySpec[Any, Any],
    key: tuple[type[BaseModel], str],
    partial: bool,
    base: type[BaseModel] = BaseModel,
) -> type[BaseModel]:
    return _bounded_cached(spec, key, partial, base)


def _bounded_annotation(annotation: Any, bound: dict[str, Any]) -> Any:
    """`choices` make a Literal; `items` bound each element of a list."""
    choices = bound.pop("choices", None)
    if choices:
        return Literal[tuple(choices)]
    items = bound.pop("items", None)
    if items is not None:
        (item_type,) = get_args(annotation)
        return list[Annotated[item_type, Field(**items)]]  # type: ignore[valid-type]
    return annotation


@cache
def _defaults_model(params_type: type[BaseModel], always_sent: frozenset[str]) -> type[BaseModel]:
    definitions: dict[str, Any] = {
        name: (info.annotation | None, None)  # type: ignore[operator]
        for name, info in params_type.model_fields.items()
        if name not in always_sent
    }
    return create_model(
        f"{params_type.__name__}Defaults",
        __config__=ConfigDict(extra="forbid", frozen=True),
        **definitions,
    )


# -- shared bounds ----------------------------------------------------------------------

# A seed is any int64 (the server draws one below 2**63 when none is given).
SEED_BOUNDS: dict[str, Any] = {"ge": -(2**63), "le": 2**63 - 1}


def prompt_bounds(max_chars: int) -> dict[str, Any]:
    return {
        "max_length": max_chars,
        "pattern": NOT_BLANK,
        "description": f"at most {max_chars} characters",
    }


def finite(low: float, high: float) -> dict[str, Any]:
    return {"ge": low, "le": high, "allow_inf_nan": False}
