"""A model's provenance settings, from its manifest entry.

`provenance = "off"` removes the record from the model's files; a table
(`[image.provenance]`) with `include_prompt = true` puts the prompt in it. The prompt is
left out by default, since a prompt may be private; a request can opt in by itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProvenanceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    record: bool = Field(True, description="write a generation record into every file")
    include_prompt: bool = Field(False, description="the record holds the prompt")

    @model_validator(mode="before")
    @classmethod
    def _a_word_for_on_or_off(cls, data: Any) -> Any:
        if data == "off":
            return {"record": False}
        if data == "on":
            return {}
        if isinstance(data, str):
            raise ValueError(f'provenance is "on", "off" or a table, got {data!r}')
        return data
