"""A job's request from HTTP: a modality's fields as the seed routes take them, checked
with the same schemas (the server's bounds), then its proto request in a SubmitJobRequest.

A JSON body carries a spec's upload (video's image) as base64, or a `data:` URL; a form
carries it as a file. No per-modality code: the specs say which field is the upload.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError, create_model

from genserve.bridge.convert import request_pb
from genserve.bridge.errors import BridgeError
from genserve.bridge.job_calls import JOB_SPECS
from genserve.bridge.limits import ServerLimits
from genserve.bridge.schemas import JsonBody, seed_schemas
from genserve.contract import ModalitySpec, spec_for
from genserve.v1 import jobs_pb2

JOB_MODALITIES: tuple[str, ...] = tuple(name for spec in JOB_SPECS for name in spec.names)


def invalid(loc: tuple[str | int, ...], problem: str) -> RequestValidationError:
    """A 422 naming the field (the validation handler drops the leading "body")."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": problem, "input": None}]
    )


def decode_base64(value: object, loc: tuple[str | int, ...]) -> bytes:
    """Base64, plain or as a data URL (`data:image/png;base64,...`)."""
    if not isinstance(value, str):
        raise invalid(loc, "expected a base64 string or a data: URL")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(loc, "not valid base64") from None


@dataclass(frozen=True)
class JobParams:
    """One modality's ways in for a job: its JSON fields and its form fields, bounded."""

    spec: ModalitySpec[Any, Any]
    json: type[BaseModel]
    form: type[BaseModel]
    upload_bytes: int  # the largest upload it takes (0: it takes none)

    @classmethod
    def of(cls, spec: ModalitySpec[Any, Any], limits: ServerLimits) -> JobParams:
        schemas = seed_schemas(spec, limits.of(spec))
        if schemas.body is not None and schemas.query is not None:
            return cls(spec, schemas.body, schemas.query, 0)
        assert schemas.form is not None
        fields: dict[str, Any] = {
            name: (info.annotation, info) for name, info in schemas.form.model_fields.items()
        }
        json = create_model(f"{spec.name.capitalize()}JobParams", __base__=JsonBody, **fields)
        return cls(spec, json, schemas.form, limits.upload_bytes(spec))

    def from_json(self, params: Mapping[str, Any], loc: tuple[str, ...] = ()) -> Any:
        """The proto request from JSON fields (the upload as base64)."""
        fields = dict(params)
        upload = None
        if self.spec.upload is not None:
            name = self.spec.upload.field
            if fields.get(name) is None:
                raise invalid((*loc, name), "is required")
            upload = self._bounded(decode_base64(fields.pop(name), (*loc, name)), (*loc, name))
        return request_pb(self.spec, _validated(self.json, fields, loc), upload)

    def from_form(self, fields: Mapping[str, Any], upload: bytes | None) -> Any:
        """The proto request from form fields (text, parsed) and the uploaded file."""
        if self.spec.upload is not None and upload is None:
            raise invalid((self.spec.upload.field,), "is required")
        return request_pb(self.spec, _validated(self.form, fields, ()), upload)

    def _bounded(self, data: bytes, loc: tuple[str, ...]) -> bytes:
        if len(data) > self.upload_bytes:
            message = f"{'.'.join(loc)}: larger than the limit of {self.upload_bytes} bytes"
            raise BridgeError(422, "INVALID_ARGUMENT", message, param=loc[-1])
        return data


def _validated(model: type[BaseModel], fields: Mapping[str, Any], loc: tuple[str, ...]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        for problem in problems:
            problem["loc"] = ("body", *loc, *problem["loc"])
        raise RequestValidationError(problems) from None


class JobRequests:
    """Every job modality's params, built once from the server's limits."""

    def __init__(self, limits: ServerLimits) -> None:
        self._by_name = {spec.name: JobParams.of(spec, limits) for spec in JOB_SPECS}

    def params(self, modality: str) -> JobParams:
        return self._by_name[spec_for(modality).name]


def submit_request(
    spec: ModalitySpec[Any, Any],
    request: Any,
    idempotency_key: str | None = None,
    ttl_s: int | None = None,
) -> jobs_pb2.SubmitJobRequest:
    submit = jobs_pb2.SubmitJobRequest(idempotency_key=idempotency_key or "", ttl_s=ttl_s or 0)
    getattr(submit, spec.name).CopyFrom(request)
    return submit
