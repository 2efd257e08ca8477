"""The seed's HTTP routes, generated from the specs: one set per modality at its
`http_path`, the request's fields (the proto's names) as parameters, plus `model`.

- A spec whose request carries a file (video's image, transcription's audio) is one POST
  taking multipart: the file as its part, the other fields as form fields.
- Any other is a GET with query parameters and a POST with a JSON body: the same fields,
  except a list of messages (text's `messages`), which only a body can carry.

How a route answers follows its interaction; see `describe`.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from google.protobuf.message import Message
from pydantic import BaseModel

from genserve.bridge.backend import BackendHolder, current_metadata
from genserve.bridge.convert import event_dict, request_pb
from genserve.bridge.errors import ERROR_SCHEMA, documented_errors
from genserve.bridge.limits import ServerLimits
from genserve.bridge.observability import BridgeMetrics
from genserve.bridge.reannotated import Reannotated
from genserve.bridge.schemas import seed_schemas
from genserve.bridge.settings import Timeouts
from genserve.bridge.streams import (
    SSE_EVENT_SCHEMA,
    SeedEvents,
    TextAnswer,
    TextRelay,
    media_file_response,
    media_sse_response,
    next_event,
)
from genserve.bridge.uploads import read_upload
from genserve.contract import SPECS, Interaction, ModalitySpec

SSE = "text/event-stream"
JSON = "application/json"
BINARY = {"schema": {"type": "string", "format": "binary"}}
OBJECT = {"schema": {"type": "object"}}

Answer = Callable[[Request, BaseModel, Message], Awaitable[Response]]


def accepts(request: Request, media_type: str) -> bool:
    return media_type in request.headers.get("accept", "")


def build_seed_router(
    backend: BackendHolder, limits: ServerLimits, timeouts: Timeouts, metrics: BridgeMetrics
) -> APIRouter:
    router = APIRouter(tags=["generate"], responses=documented_errors(ERROR_SCHEMA))
    for spec in SPECS:
        SeedRoutes(spec, limits, backend, timeouts, metrics).add_to(router)
    return router


def describe(spec: ModalitySpec[Any, Any]) -> str:
    """What a spec's routes take and answer, for its OpenAPI description."""
    if spec.upload is not None:
        takes = (
            f"Multipart: the file as `{spec.upload.field}` ({spec.upload.description}), "
            "the other fields as form fields."
        )
    else:
        takes = "GET takes the fields as query parameters, POST as a JSON body."
    if spec.interaction is Interaction.TEXT_STREAM:
        answers = (
            "Answers the text as plain text; with `Accept: application/json`, JSON: "
            f'`{{"text", "{spec.piece}s": [...]}}` and the final event\'s fields; with '
            f"`stream=true`, Server-Sent Events: a `{spec.piece}` event each, then `final` "
            "(or `error`)."
        )
    elif spec.interaction is Interaction.MEDIA_STREAM:
        answers = (
            "Answers the file, streamed as it is made; with `Accept: text/event-stream`, "
            "Server-Sent Events: `header`, `progress`, `chunk` (base64), `final`."
        )
    else:
        answers = "Answers the reply as JSON."
    return f"{spec.description[0].upper()}{spec.description[1:]}. {takes} {answers}"


def documented_answers(spec: ModalitySpec[Any, Any]) -> dict[int | str, dict[str, Any]]:
    if spec.interaction is Interaction.TEXT_STREAM:
        content: dict[str, Any] = {
            "text/plain": {"schema": {"type": "string"}},
            JSON: {**OBJECT, "description": "with Accept: application/json"},
            SSE: {"schema": SSE_EVENT_SCHEMA, "description": "with stream=true"},
        }
    elif spec.interaction is Interaction.MEDIA_STREAM:
        content = dict.fromkeys(spec.mime_types, BINARY)
        content[SSE] = {"schema": {"type": "string"}, "description": "with Accept: " + SSE}
    else:
        content = {JSON: OBJECT}
    return {200: {"content": content, "description": "the answer"}}


class SeedRoutes:
    """One spec's routes: one handler per way in (parameters, or a form and a file),
    one answer per interaction."""

    def __init__(
        self,
        spec: ModalitySpec[Any, Any],
        limits: ServerLimits,
        backend: BackendHolder,
        timeouts: Timeouts,
        metrics: BridgeMetrics,
    ) -> None:
        self._spec = spec
        self._limits = limits.of(spec)
        self._upload_bytes = limits.upload_bytes(spec)
        self._backend = backend
        self._timeout = timeouts.for_spec(spec)
        self._relay = TextRelay(spec, metrics)
        answers: dict[Interaction, Answer] = {
            Interaction.TEXT_STREAM: self._text,
            Interaction.MEDIA_STREAM: self._media,
            Interaction.UNARY: self._unary,
        }
        self._answer = answers[spec.interaction]

    def add_to(self, router: APIRouter) -> None:
        spec = self._spec
        schemas = seed_schemas(spec, self._limits)
        route: dict[str, Any] = {
            "response_class": Response,
            "responses": documented_answers(spec),
            "summary": spec.description,
            "description": describe(spec),
        }
        if spec.upload is not None:
            field = spec.upload.field
            file = File(alias=field, title=field.capitalize(), description=spec.upload.description)
            upload = Reannotated(
                self._from_form,
                params=Annotated[schemas.form, Form()],
                file=Annotated[UploadFile, file],
            )
            router.add_api_route(spec.http_path, upload, methods=["POST"], name=spec.name, **route)
            return
        query = Reannotated(self._from_params, params=Annotated[schemas.query, Query()])
        body = Reannotated(self._from_params, params=schemas.body)
        router.add_api_route(spec.http_path, query, methods=["GET"], name=spec.name, **route)
        name = f"{spec.name}_json"
        router.add_api_route(spec.http_path, body, methods=["POST"], name=name, **route)

    # -- ways in ------------------------------------------------------------------------

    async def _from_params(self, request: Request, params: BaseModel) -> Response:
        return await self._answer(request, params, request_pb(self._spec, params))

    async def _from_form(self, request: Request, params: BaseModel, file: UploadFile) -> Response:
        assert self._spec.upload is not None
        data = await read_upload(file, self._spec.upload.field, self._upload_bytes)
        return await self._answer(request, params, request_pb(self._spec, params, data))

    # -- answers ------------------------------------------------------------------------

    def _call(self, request: Message) -> Any:
        rpc = self._backend.stubs().call(self._spec)
        return rpc(request, metadata=current_metadata(), timeout=self._timeout)

    async def _text(self, request: Request, params: BaseModel, pb: Message) -> Response:
        call = self._call(pb)
        first = await next_event(call)
        if getattr(params, "stream", False):
            return self._relay.sse(call, first, SeedEvents(self._spec.piece))
        answer = await self._relay.fold(call, first)
        if accepts(request, JSON):
            return JSONResponse(self._json(answer))
        return PlainTextResponse(answer.text)

    def _json(self, answer: TextAnswer) -> dict[str, Any]:
        # The list of pieces takes the place of the final event's count of them, if it
        # has one (transcription's `segments`).
        return {
            **event_dict(answer.final),
            "text": answer.text,
            f"{self._spec.piece}s": [event_dict(piece) for piece in answer.pieces],
        }

    async def _media(self, request: Request, params: BaseModel, pb: Message) -> Response:
        call = self._call(pb)
        if accepts(request, SSE):
            return media_sse_response(call, await next_event(call))
        return await media_file_response(call, self._spec.attachment)

    async def _unary(self, request: Request, params: BaseModel, pb: Message) -> Response:
        return JSONResponse(event_dict(await self._call(pb)))
