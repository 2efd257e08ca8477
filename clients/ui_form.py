"""The UI's parameter form, built from a spec's request model bounded by the limits the
server publishes (ListModels): a widget per field, its bounds the server's own, so what
the form allows is what the server accepts.

Three kinds of field are not in the form: the chat input's (the request's first field,
when it is text), the conversation (a repeated message of role and content, filled from
the chat history) and the upload (a file uploader). Every widget starts unset: an unset
field takes the server's (or the model's) default, shown as the placeholder.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import annotated_types
import streamlit as st
from google.protobuf.descriptor import FieldDescriptor
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from genserve.contract import ModalitySpec

JS_SAFE_INT = 2**53 - 1  # Streamlit's number inputs hold JavaScript numbers
FLOAT_STEPS = 100  # a float field's step: its range in this many steps
MULTILINE_CHARS = 1000  # a text field that may be longer gets a text area


def chat_field(spec: ModalitySpec[Any, Any]) -> str | None:
    """The field the chat input fills: the first, when it holds text (a prompt, texts)."""
    first = spec.request_descriptor.fields[0]
    is_text = first.cpp_type == FieldDescriptor.CPPTYPE_STRING
    return first.name if is_text and first.type != FieldDescriptor.TYPE_BYTES else None


def conversation_field(spec: ModalitySpec[Any, Any]) -> str | None:
    """A repeated message of role and content: where the chat history goes."""
    for field in spec.request_descriptor.fields:
        message = field.message_type
        if (
            field.is_repeated
            and message is not None
            and {"role", "content"} <= set(message.fields_by_name)
        ):
            return str(field.name)
    return None


def form_fields(spec: ModalitySpec[Any, Any], limits: Any) -> dict[str, FieldInfo]:
    """The fields the form shows, bounded by the limits."""
    skipped = {chat_field(spec), conversation_field(spec)}
    skipped.add(spec.upload.field if spec.upload else None)
    fields = spec.request_model(limits).model_fields
    return {name: info for name, info in fields.items() if name not in skipped}


def widget_key(spec: ModalitySpec[Any, Any], name: str) -> str:
    return f"{spec.name}.{name}"


def render_form(spec: ModalitySpec[Any, Any], limits: Any) -> dict[str, Any]:
    """The form's widgets (in the current container); the fields the user set."""
    values = {
        name: _widget(spec, name, info, _default(spec.params_type, name))
        for name, info in form_fields(spec, limits).items()
    }
    return {name: value for name, value in values.items() if value is not None}


def upload_widget(spec: ModalitySpec[Any, Any], limits: Any) -> bytes | None:
    if spec.upload is None:
        return None
    max_mb = max(1, math.ceil(spec.upload.max_bytes(limits) / 2**20))
    label = f"{spec.upload.field} ({spec.upload.description})"
    uploaded = st.file_uploader(label, key=widget_key(spec, "upload"), max_upload_size=max_mb)
    if isinstance(uploaded, list):  # one file per upload field
        uploaded = uploaded[0] if uploaded else None
    return uploaded.getvalue() if uploaded is not None else None


def _default(params_type: type[BaseModel], name: str) -> str:
    info = params_type.model_fields.get(name)
    if info is None or info.is_required():
        return ""
    return str(info.get_default(call_default_factory=True))


def _widget(spec: ModalitySpec[Any, Any], name: str, info: FieldInfo, default: str) -> Any:
    key = widget_key(spec, name)
    kind = _unwrap(info.annotation)
    bounds = _bounds(info)
    placeholder = f"default: {default}" if default and len(default) < 40 else "default"
    help_text = info.description
    choices = _choices(kind)
    if choices is not None:
        return st.selectbox(
            name, choices, index=None, key=key, help=help_text, placeholder=placeholder
        )
    if kind is bool:
        switch: list[bool | None] = [None, True, False]

        def shown(value: bool | None) -> str:
            return placeholder if value is None else str(value).lower()

        return st.selectbox(name, switch, format_func=shown, key=key, help=help_text)
    if kind in (int, float):
        numbers = _number_range(kind, bounds)
        return st.number_input(
            name, value=None, key=key, help=help_text, placeholder=placeholder, **numbers
        )
    if get_origin(kind) is list:  # one item per line
        text = st.text_area(name, key=key, help=help_text, placeholder="one per line")
        items = [line for line in text.splitlines() if line.strip()]
        return items or None
    max_chars = bounds.get("max_length")
    if "\n" in default or (max_chars or 0) > MULTILINE_CHARS:  # a system prompt, say
        text = st.text_area(
            name, key=key, help=help_text, placeholder=f"default: {default}", max_chars=max_chars
        )
    else:
        text = st.text_input(
            name, key=key, help=help_text, placeholder=placeholder, max_chars=max_chars
        )
    return text or None  # empty: unset (the server's default)


def _number_range(kind: type, bounds: dict[str, Any]) -> dict[str, Any]:
    """min, max and step of a number input, from the field's bounds."""
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if kind is int:
        low = max(int(low), -JS_SAFE_INT) if low is not None else None
        high = min(int(high), JS_SAFE_INT) if high is not None else None
        step: Any = bounds.get("multiple_of", 1)
    else:
        low = float(low) if low is not None else None
        high = float(high) if high is not None else None
        step = (high - low) / FLOAT_STEPS if low is not None and high is not None else 0.01
    return {"min_value": low, "max_value": high, "step": step}


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X (the request model makes every optional field so)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if (
        get_origin(annotation) is not Literal
        and len(args) == 1
        and type(None) in get_args(annotation)
    ):
        return args[0]
    return annotation


def _choices(kind: Any) -> list[Any] | None:
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [member.value for member in kind]
    return None


def _bounds(info: FieldInfo) -> dict[str, Any]:
    """ge/gt/le/lt/multiple_of/max_length, from the field's annotated-types metadata."""
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt", "multiple_of", "max_length"):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, name):
                bounds[name] = getattr(item, name)
    return bounds
