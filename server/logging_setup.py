"""Logging, configured once by main(): every line carries the request ID."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from genserve.server.request_context import current_request_id

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"


def _stamp_request_id(
    factory: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    """Wraps the record factory so every record, whoever handles it, has a request_id."""
    if getattr(factory, "stamps_request_id", False):
        return factory

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = current_request_id()
        return record

    make_record.stamps_request_id = True  # type: ignore[attr-defined]
    return make_record


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    logging.setLogRecordFactory(_stamp_request_id(logging.getLogRecordFactory()))
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' progress chatter is not ours to print at INFO.
    for noisy in ("transformers", "accelerate", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
