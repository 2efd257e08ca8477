"""The running request's generation record, where its encoders find it.

Set by the stamped engine (engine.py) while it queues a request; the engines copy the
caller's context into their jobs, so it is current on the model thread too.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from genserve.server.provenance.record import Record

_record_var: ContextVar[Record | None] = ContextVar("generation_record", default=None)


def current_record() -> Record | None:
    """The running request's record; None when there is none to write."""
    return _record_var.get()


def set_record(record: Record | None) -> Token[Record | None]:
    return _record_var.set(record)


def reset_record(token: Token[Record | None]) -> None:
    _record_var.reset(token)
