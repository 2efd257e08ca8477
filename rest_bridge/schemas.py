"""The seed routes' request models, one set per spec, from the spec's bounded request model
(its fields with the server's limits), so that the OpenAPI document states the bounds the
server enforces, and a new modality gets its schemas with no code here.

JSON bodies take exactly their JSON types (`"5"` is not an integer, `1` is not a
boolean); query strings and forms are text by nature and are parsed, then bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from genserve.bridge.contract_gaps import tightened_body, tightened_query
from genserve.contract import Interaction, ModalitySpec

# Integers stay within what a JSON number holds exactly (JavaScript's safe integers): a
# seed's proto bound (int64) would be published rounded, past what the server takes.
MAX_SAFE_INTEGER = 2**53 - 1


class JsonBody(BaseModel):
    """A JSON body that takes what its JSON schema says and no more: a number field does
    not take a string ("5"), a boolean does not take 1. (Pydantic's strict mode goes
    further and refuses 5.0 for an integer, which JSON Schema calls an integer.)"""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_coercion_from_json_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if value is None:
                continue
            accepted = _json_types(field.annotation)
            if isinstance(value, str) and str not in accepted:
                raise ValueError(f"{name}: expected a JSON {_describe(accepted)}, got a string")
            if bool in accepted and str not in accepted and not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false")
        return data


class QueryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FormFields(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the form also carries the uploaded file


def _json_types(annotation: Any) -> set[Any]:
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _json_types(args[0])
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    if args and get_origin(annotation) in (Union, UnionType):
        return set().union(*(_json_types(a) for a in args))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {type(member.value) for member in annotation}  # "png" for ImageFormat.PNG
    return {get_origin(annotation) or annotation}


def _describe(types: set[Any]) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array"}
    return " or ".join(sorted({names.get(t, "value") for t in types if t is not type(None)}))


def one_of(values: tuple[str, ...]) -> Any:
    """An enum of the given strings (any string when there are none to list)."""
    return Literal[values] if values else str


def model_field() -> Any:
    return Field(None, description="a model name (GET /models); unset: the modality's default")


@dataclass(frozen=True)
class SeedSchemas:
    """A spec's HTTP request models: GET and POST JSON twins, or, for a spec whose request
    carries a file, the multipart form's other fields."""

    query: type[BaseModel] | None
    body: type[BaseModel] | None
    form: type[BaseModel] | None


def seed_schemas(spec: ModalitySpec[Any, Any], limits: BaseModel) -> SeedSchemas:
    title = spec.name.capitalize()
    bounded = spec.request_model(limits)
    route_fields = _route_fields(spec)
    if spec.upload is not None:
        upload = spec.upload.field
        form = _model(f"{title}Form", FormFields, bounded, route_fields, lambda n, _: n != upload)
        return SeedSchemas(query=None, body=None, form=form)
    # A list of messages has no query-string form: the POST body alone takes it.
    query = _model(f"{title}Query", QueryParams, bounded, route_fields, _not_a_model_list)
    body = _model(f"{title}Body", JsonBody, bounded, route_fields, lambda _, __: True)
    query = tightened_query(spec.name, query)
    body = tightened_body(spec.name, body)
    return SeedSchemas(query=query, body=body, form=None)


def _route_fields(spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    """What every seed route takes besides the request's fields."""
    fields: dict[str, Any] = {"model": (str | None, model_field())}
    if spec.interaction is Interaction.TEXT_STREAM:
        description = f"true: Server-Sent Events, one per {spec.piece}, then the final event"
        fields["stream"] = (bool, Field(False, description=description))
    return fields


def _model(
    title: str,
    base: type[BaseModel],
    bounded: type[BaseModel],
    extra: dict[str, Any],
    keep: Callable[[str, FieldInfo], bool],
) -> type[BaseModel]:
    """The bounded request model's fields that `keep(name, field)` keeps, on `base`."""
    fields: dict[str, Any] = {
        name: (info.annotation, _json_safe(info))
        for name, info in bounded.model_fields.items()
        if keep(name, info)
    }
    return create_model(title, __base__=base, **fields, **extra)


def _json_safe(info: FieldInfo) -> FieldInfo:
    """The field with its integer bounds inside +-MAX_SAFE_INTEGER."""
    safe = copy.copy(info)
    safe.metadata = [_safe_bound(bound) for bound in info.metadata]
    return safe


def _safe_bound(bound: Any) -> Any:
    if isinstance(bound, annotated_types.Le) and isinstance(bound.le, int):
        return annotated_types.Le(min(bound.le, MAX_SAFE_INTEGER))
    if isinstance(bound, annotated_types.Ge) and isinstance(bound.ge, int):
        return annotated_types.Ge(max(bound.ge, -MAX_SAFE_INTEGER))
    return bound


def _not_a_model_list(name: str, info: FieldInfo) -> bool:
    return not any(
        isinstance(item, type) and issubclass(item, BaseModel)
        for option in _options(info.annotation)
        if get_origin(option) is list
        for item in get_args(option)
    )


def _options(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)
