"""A job's request from HTTP: a modality's fields as the seed routes take them, checked
with the same schemas (the server's bounds), then its proto request in a SubmitJobRequest.

A JSON body carries a spec's upload (video's image) as base64, or a `data:` URL; a form
carries it as a file. No per-modality code: the specs say which field is the upload.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from genserve.bridge.convert import HTTP_ONLY_FIELDS, request_pb
from genserve.bridge.errors import BridgeError
from genserve.bridge.job_calls import JOB_SPECS
from genserve.bridge.limits import ServerLimits
from genserve.bridge.schemas import JsonBody, seed_schemas
from genserve.contract import ModalitySpec, spec_for
from genserve.v1 import jobs_pb2

JOB_MODALITIES: tuple[str, ...] = tuple(name for spec in JOB_SPECS for name in spec.names)
MAX_KEY_CHARS = 256
MAX_TTL_S = 2**32 - 1  # ttl_s is a uint32
DATA_URL_SLACK = 100  # "data:image/png;base64,"


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


def _base64_chars(max_bytes: int) -> int:
    return 4 * math.ceil(max_bytes / 3) + DATA_URL_SLACK


class JobParams:
    """One modality's ways in for a job: its JSON fields (the upload as base64) and its form
    fields (the upload as a file), bounded as its seed routes are."""

    def __init__(self, spec: ModalitySpec[Any, Any], limits: ServerLimits) -> None:
        self.spec = spec
        self.upload_bytes = limits.upload_bytes(spec)
        schemas = seed_schemas(spec, limits.of(spec))
        if schemas.body is not None and schemas.query is not None:
            self.json, self.form = schemas.body, schemas.query
            return
        assert schemas.form is not None and spec.upload is not None
        self.form = schemas.form
        fields: dict[str, Any] = {
            name: (info.annotation, info) for name, info in schemas.form.model_fields.items()
        }
        encoded = Field(
            min_length=1,
            max_length=_base64_chars(self.upload_bytes),
            description=f"{spec.upload.description}: base64, or a data: URL",
        )
        fields[spec.upload.field] = (str, encoded)
        title = f"{spec.name.capitalize()}JobParams"
        self.json = create_model(title, __base__=JsonBody, **fields)

    def submission(self) -> type[BaseModel]:
        """A JSON submission of this modality: {"modality", "params", ...}."""
        names: Any = Literal[self.spec.names]  # the spec's name and its aliases
        return create_model(
            f"{self.spec.name.capitalize()}JobSubmission",
            __base__=SubmissionBase,
            modality=(names, Field(description=self.spec.description)),
            params=(self.json, Field(description="the fields its /generate route takes")),
        )

    def from_json(self, params: Mapping[str, Any], loc: tuple[str, ...] = ()) -> Any:
        """The proto request from JSON fields, checked (the upload as base64)."""
        return self.from_valid_json(_validated(self.json, params, loc), loc)

    def from_valid_json(self, params: BaseModel, loc: tuple[str, ...] = ()) -> Any:
        fields = params.model_dump(exclude=set(HTTP_ONLY_FIELDS), exclude_none=True)
        if self.spec.upload is not None:
            name = self.spec.upload.field
            fields[name] = self._bounded(decode_base64(fields[name], (*loc, name)), (*loc, name))
        return self.spec.fields_to_request(fields)

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


class SubmissionBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idempotency_key: str | None = Field(
        None,
        max_length=MAX_KEY_CHARS,
        description="the same key from the same caller returns the job it made",
    )
    ttl_s: int | None = Field(
        None, ge=1, le=MAX_TTL_S, description="seconds the file is kept; unset: the server's"
    )


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
        self._by_name = {spec.name: JobParams(spec, limits) for spec in JOB_SPECS}

    def params(self, modality: str) -> JobParams:
        return self._by_name[spec_for(modality).name]

    def submission(self) -> Any:
        """The JSON body of POST /v1/jobs: one shape per modality, told by `modality`."""
        variants = tuple(params.submission() for params in self._by_name.values())
        return Annotated[Union[variants], Field(discriminator="modality")]  # noqa: UP007


def submit_request(
    spec: ModalitySpec[Any, Any],
    request: Any,
    idempotency_key: str | None = None,
    ttl_s: int | None = None,
) -> jobs_pb2.SubmitJobRequest:
    submit = jobs_pb2.SubmitJobRequest(idempotency_key=idempotency_key or "", ttl_s=ttl_s or 0)
    getattr(submit, spec.name).CopyFrom(request)
    return submit
