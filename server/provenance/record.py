"""The generation record: what a file says about how it was made, as plain values.

One record per request, built from the model's stamp (made once at load) and the
request's parameters. The prompt (and negative prompt) go in only when the model or the
request opts in; an uploaded input (a video's start image) is recorded by its sha256,
never its bytes. The record is written as compact JSON, ASCII only, so it fits any
header that takes text (a PLY comment, a RIFF INFO string).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel

from genserve.server.provenance.spec import ProvenanceSpec

RECORD_KEY = "genserve"  # the PNG iTXt keyword, the XMP property, the MP4 tag's name
SOFTWARE = "genserve"
PROMPT_FIELDS = ("prompt", "negative_prompt")
INPUT_FIELDS = ("image",)  # uploads: recorded by digest
OPT_IN_FIELD = "include_prompt"  # a request's own opt-in


@cache
def genserve_version() -> str:
    try:
        return version("genserve")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ModelStamp:
    """What every file of one loaded model shares."""

    modality: str
    model: str
    engine: str
    weights_sha256: str | None
    provenance: ProvenanceSpec
    signer: Any = field(default=None, compare=False, repr=False)  # c2pa_sign.C2paSigner

    def record_for(self, params: BaseModel, request_id: str, created: float) -> Record | None:
        """This request's record; None when the model's provenance is off."""
        if not self.provenance.record:
            return None
        return Record(build_record(self, params, request_id, created), self.signer)


@dataclass(frozen=True)
class Record:
    """A built record, and its one serialization."""

    fields: dict[str, Any]
    signer: Any = field(default=None, compare=False, repr=False)  # signs the file (C2PA)

    @property
    def json(self) -> str:
        return record_json(self.fields)

    @property
    def software(self) -> str:
        return f"{SOFTWARE} {self.fields['genserve_version']}"


def build_record(
    stamp: ModelStamp, params: BaseModel, request_id: str, created: float
) -> dict[str, Any]:
    values = params.model_dump(mode="python")
    include_prompt = stamp.provenance.include_prompt or bool(values.get(OPT_IN_FIELD))
    parameters: dict[str, Any] = {}
    for name, value in values.items():
        if name in PROMPT_FIELDS or name == OPT_IN_FIELD or name == "seed":
            continue
        if name in INPUT_FIELDS and isinstance(value, bytes):
            parameters[f"{name}_sha256"] = hashlib.sha256(value).hexdigest()
            continue
        parameters[name] = value.value if hasattr(value, "value") else value
    record: dict[str, Any] = {
        "ai_generated": True,
        "generator": SOFTWARE,
        "genserve_version": genserve_version(),
        "modality": stamp.modality,
        "model": stamp.model,
        "weights_sha256": stamp.weights_sha256,
        "engine": stamp.engine,
        "seed": values.get("seed"),
        "parameters": parameters,
        "request_id": request_id,
        "created": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
    }
    if include_prompt:
        for name in PROMPT_FIELDS:
            if values.get(name):
                record[name] = values[name]
    return record


def record_json(fields: dict[str, Any]) -> str:
    """Compact, ASCII-only JSON (non-ASCII escaped), one line, keys sorted."""
    return json.dumps(fields, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
