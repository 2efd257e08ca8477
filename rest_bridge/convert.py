"""HTTP request models to protobuf requests, and protobuf events to JSON-able dicts.

Both go through the contract: a request's fields by their proto names, enums by their
short names ("png", "length"), so the bridge keeps no table of its own.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BaseModel

from genserve.contract import ModalitySpec
from genserve.contract.spec import enum_names

# Fields of the HTTP models that are not request fields: how to answer, not what to do.
HTTP_ONLY_FIELDS = frozenset({"stream"})


def request_pb(
    spec: ModalitySpec[Any, Any], params: BaseModel, upload: bytes | None = None
) -> Message:
    """The fields the caller gave; unset ones stay unset in the proto, so the server
    applies its own (the model's manifest) defaults."""
    fields = params.model_dump(exclude=set(HTTP_ONLY_FIELDS), exclude_none=True)
    if spec.upload is not None and upload is not None:
        fields[spec.upload.field] = upload
    return spec.fields_to_request(fields)


def event_dict(message: Message) -> dict[str, Any]:
    """Every field, zeros too (an empty delta still has its "text"); enums by short name."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for field in message.DESCRIPTOR.fields:
        if field.enum_type is not None and field.name in data:
            data[field.name] = _short_name(message, field)
    return data


def short_name(message: Message, field: str) -> str:
    """An enum field's short name: a TextFinal's finish_reason is "stop" or "length"."""
    return _short_name(message, message.DESCRIPTOR.fields_by_name[field])


def _short_name(message: Message, field: Any) -> str:
    # `field` is a FieldDescriptor, which the stubs type as the Python or the upb class
    # (one class at run time), as they do its enum_type.
    names = enum_names(cast(EnumDescriptor, field.enum_type))
    return names.get(getattr(message, field.name), "unspecified")
