"""What the seed routes' schemas must say that the contract cannot say yet, so that they
do not call valid what the server refuses. Each rule here goes once the contract states
it (the report on issue 20 lists them):

- a field a request needs unless a list is given instead: text's prompt, or messages
  (a JSON Schema `anyOf`, which the contract's per-field bounds do not express).
"""

from __future__ import annotations

from typing import Any

from annotated_types import MaxLen
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.config import JsonDict

from genserve.contract.spec import NOT_BLANK

# spec name -> (the text field, the list that may stand in for it)
REQUIRED_UNLESS: dict[str, tuple[str, str]] = {"text": ("prompt", "messages")}


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
    """The body needs the text or the list."""
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
