"""What the seed routes' schemas must say that the contract cannot say yet, so that they
do not call valid what the server refuses. Each rule here goes once the contract states
it (the report on issue 20 lists them):

- a field a request needs unless a list is given instead: text's prompt, or messages;
- a chat message's content must hold something (the contract's ChatMessage leaves it
  unbounded; the server refuses an empty one).
"""

from __future__ import annotations

import copy
import functools
import operator
from types import UnionType
from typing import Any, Union, get_args, get_origin

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.config import JsonDict

from genserve.contract.modalities.text import ChatMessage as ContractChatMessage

NOT_BLANK = r"\S"

# spec name -> (the text field, the list that may stand in for it)
REQUIRED_UNLESS: dict[str, tuple[str, str]] = {"text": ("prompt", "messages")}


class ChatMessage(ContractChatMessage):
    content: str = Field(pattern=NOT_BLANK)


# List items the server bounds more than the contract's model says.
ITEM_MODELS: dict[type[BaseModel], type[BaseModel]] = {ContractChatMessage: ChatMessage}


def tightened_query(spec: str, query: type[BaseModel]) -> type[BaseModel]:
    """The query, which cannot carry the list, needs the text."""
    if spec not in REQUIRED_UNLESS:
        return query
    text, _ = REQUIRED_UNLESS[spec]
    info = query.model_fields[text]
    max_length = next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None)
    required: Any = (
        str,
        Field(max_length=max_length, pattern=NOT_BLANK, description=info.description),
    )
    return create_model(query.__name__, __base__=query, **{text: required})


def tightened_body(spec: str, body: type[BaseModel]) -> type[BaseModel]:
    """The body needs the text or the list, and its list items are bounded."""
    items: dict[str, Any] = {
        name: (_with_item_models(info.annotation), copy.copy(info))
        for name, info in body.model_fields.items()
        if _with_item_models(info.annotation) != info.annotation
    }
    body = create_model(body.__name__, __base__=body, **items) if items else body
    if spec not in REQUIRED_UNLESS:
        return body
    text, alternative = REQUIRED_UNLESS[spec]
    either: JsonDict = {
        "anyOf": [
            {"required": [text], "properties": {text: {"type": "string", "pattern": NOT_BLANK}}},
            {
                "required": [alternative],
                "properties": {alternative: {"type": "array", "minItems": 1}},
            },
        ]
    }
    namespace = {"model_config": ConfigDict(json_schema_extra=either), "__module__": __name__}
    return type(body.__name__, (body,), namespace)


def _with_item_models(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        return functools.reduce(operator.or_, map(_with_item_models, get_args(annotation)))
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return _list_of(ITEM_MODELS.get(item, item))
    return annotation


def _list_of(item: Any) -> Any:
    return list[item]
