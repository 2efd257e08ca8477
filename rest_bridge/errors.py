"""gRPC statuses to HTTP errors, with the JSON body {"error": {code, message, request_id}}.

The status table is the server's (server.errors), so both sides agree on one mapping.
OpenAI-compatible routes answer in OpenAI's error shape instead, which its SDK reads.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from genserve.bridge.request_id import current_request_id
from genserve.contract.metadata import RETRY_AFTER
from genserve.contract.spec import problem_of
from genserve.server.errors import http_status_for

logger = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
DEFAULT_RETRY_AFTER_S = 1  # for a 429 whose server named no wait
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "description": "the gRPC status name"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
    },
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
        }
    },
}
ERROR_DESCRIPTIONS = {
    400: "an option the bridge does not serve",
    401: "a missing or unknown API key (`Authorization: Bearer <key>`)",
    403: "the API key may not use this model or modality",
    404: "no model of that name serves this route (see GET /models)",
    409: "the model failed to load or was unloaded: do not retry (POST /models/{name}/load)",
    413: "the request body is larger than the route takes",
    422: "invalid input (the message names the field and the limit)",
    429: "the model's queue is full, the key is over its budget or this address made too many "
    "failed attempts: retry after `Retry-After` seconds",
    500: "internal error",
    503: "the model or the server is not available",
    504: "the generation ran past its deadline",
}


def documented_errors(schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The error responses of a router, for its OpenAPI document."""
    return {
        status: {"description": text, "content": {"application/json": {"schema": schema}}}
        for status, text in ERROR_DESCRIPTIONS.items()
    }


class BridgeError(Exception):
    """An error the bridge itself raises (an unsupported option, a bad upload)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param  # the request field at fault, for OpenAI's error shape


def openai_error_body(
    status: int, code: str, message: str, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape, which its SDK reads (from a response, or an event mid-stream)."""
    return {
        "error": {
            "message": message,
            "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
            "param": param,
            "code": code.lower(),
            "request_id": current_request_id(),
        }
    }


def error_body(
    path: str, status: int, code: str, message: str, param: str | None = None
) -> dict[str, Any]:
    """The bridge's error shape, or OpenAI's on its routes."""
    if path.startswith(OPENAI_PREFIX):
        return openai_error_body(status, code, message, param)
    return {"error": {"code": code, "message": message, "request_id": current_request_id()}}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(request.url.path, status, code, message, param)
    return JSONResponse(status_code=status, content=body, headers=headers)


def retry_after(error: grpc.aio.AioRpcError, status: int) -> dict[str, str]:
    """The server's `retry-after` trailing metadata as HTTP's Retry-After header: a 429
    always carries one, the client libraries' backoff reads it."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER and isinstance(value, str) and value.isdigit():
            return {"Retry-After": value}
    return {"Retry-After": str(DEFAULT_RETRY_AFTER_S)} if status == 429 else {}


async def grpc_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    code = exc.code()
    status = http_status_for(code)
    message = exc.details() or code.name
    if status >= 500:
        logger.warning("gRPC %s: %s", code.name, message)
    headers = retry_after(exc, status)
    if status == 401:  # the server refused the key the caller gave (or did not)
        headers["WWW-Authenticate"] = 'Bearer realm="genserve"'
    return error_response(request, status, code.name, message, headers=headers)


async def bridge_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)
    return error_response(request, exc.status, exc.code, exc.message, exc.param)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {problem_of(e)}"
        for e in exc.errors()
    )
    return error_response(request, 422, "INVALID_ARGUMENT", problems)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        request, 500, "INTERNAL", f"internal error; request_id={current_request_id()}"
    )
