"""A subcommand's flags, read off its proto request's descriptor: every field a flag,
so a field added to a proto (or a modality added to the table) is on the command line
with no edit here.

The first field is the positional argument (a prompt, an image, an audio file); `model`
is the CLI's global --model. Types come from each field's cpp_type; enums take their
short names ("png"); repeated fields repeat the flag; bytes fields take a file's path;
message fields take JSON ('{"role": "user", "content": "Hi"}').
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from genserve.contract import ModalitySpec
from genserve.contract.spec import MODEL_FIELD, enum_values

SCALAR_TYPES: dict[int, type] = {
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_STRING: str,
}
MAX_DEFAULT_SHOWN = 40  # longer defaults (a system prompt) would drown the help
GROUP_TITLE = "request fields"  # the group that holds exactly the proto's fields


def request_fields(spec: ModalitySpec[Any, Any]) -> list[FieldDescriptor]:
    return [f for f in spec.request_descriptor.fields if f.name != MODEL_FIELD]


def add_request_flags(parser: argparse.ArgumentParser, spec: ModalitySpec[Any, Any]) -> None:
    group = parser.add_argument_group(GROUP_TITLE, "unset: the server's (or the model's) default")
    first, *rest = request_fields(spec)
    if _is_bool(first):  # a switch is never positional
        rest.insert(0, first)
    else:
        group.add_argument(first.name, **_positional(spec, first))
    for field in rest:
        flag = "--" + field.name.replace("_", "-")
        group.add_argument(flag, dest=field.name, **_flag(spec, field))


def given_fields(args: argparse.Namespace, spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    """The fields given on the command line (unset ones are left to the server)."""
    values = {f.name: getattr(args, f.name, None) for f in request_fields(spec)}
    return {name: value for name, value in values.items() if value not in (None, [])}


def _positional(spec: ModalitySpec[Any, Any], field: FieldDescriptor) -> dict[str, Any]:
    param = spec.params_type.model_fields.get(field.name)
    required = param is not None and param.is_required()
    if field.is_repeated:
        nargs: str | None = "+" if required else "*"
    else:
        nargs = None if required else "?"
    value = _value(field)
    if "metavar" in value:  # a positional's metavar is its name in the usage line
        value["metavar"] = field.name
    return {"nargs": nargs, "help": _help(spec, field), **value}


def _flag(spec: ModalitySpec[Any, Any], field: FieldDescriptor) -> dict[str, Any]:
    options: dict[str, Any] = {"default": None, "help": _help(spec, field)}
    if _is_bool(field) and not field.is_repeated:
        return options | {"action": argparse.BooleanOptionalAction}
    options |= _value(field)
    if field.is_repeated:
        options["action"] = "append"
    return options


def _value(field: FieldDescriptor) -> dict[str, Any]:
    """How argparse reads one value of the field."""
    if field.type == FieldDescriptor.TYPE_BYTES:
        return {"type": read_file, "metavar": "PATH"}
    if field.enum_type is not None:
        return {"type": str.lower, "choices": list(enum_values(field.enum_type))}
    if field.message_type is not None:
        return {"type": json_object, "metavar": "JSON"}
    if _is_bool(field):
        return {"type": _boolean, "metavar": "true|false"}
    return {"type": SCALAR_TYPES[field.cpp_type]}


def _is_bool(field: FieldDescriptor) -> bool:
    return bool(field.cpp_type == FieldDescriptor.CPPTYPE_BOOL)


def _help(spec: ModalitySpec[Any, Any], field: FieldDescriptor) -> str:
    param = spec.params_type.model_fields.get(field.name)
    if param is None:
        return ""
    parts = [param.description or ""]
    if field.type == FieldDescriptor.TYPE_BYTES:
        parts.append("(a file)")
    # A seeded spec's seed default is a placeholder: unset, the server picks one.
    placeholder = param.is_required() or (spec.seeded and field.name == "seed")
    shown = "" if placeholder else str(param.get_default(call_default_factory=True))
    if shown not in ("None", "", "[]", "()") and len(shown) <= MAX_DEFAULT_SHOWN:
        parts.append(f"(default {shown})".replace("%", "%%"))
    return " ".join(p for p in parts if p).replace("\n", " ")


def read_file(value: str) -> bytes:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a file")
    return path.read_bytes()


def json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError("expected true or false")
    return value.lower() == "true"
