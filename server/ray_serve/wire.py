"""What crosses between the edge and a replica besides requests and events: plain,
picklable values."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

import grpc

from genserve.server.errors import ServingError


@dataclass(frozen=True)
class ReplicaInfo:
    """Which replica serves a stream: its first message, before the engine's events."""

    id: str  # Serve's replica id, unique within the deployment
    actor: str  # the replica's Ray actor name (namespace "serve")
    node: str  # the Ray node it runs on
    pid: int


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's engine as it last reported itself (see board.py)."""

    info: ReplicaInfo
    ready: bool
    queued: int
    in_flight: int
    cancelled: int  # requests its engine abandoned because the caller left
    events: int  # events its engine has produced: steps, tokens, chunks
    reported_at: float  # time.time() on the replica


class ReplicaError(Exception):
    """A ServingError raised in a replica, carried as plain values: exceptions with their
    own __init__ do not survive pickling, and the caller must get its code and message."""

    def __init__(self, code: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(code, message, retry_after_s)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, error: ServingError) -> ReplicaError:
        return cls(error.grpc_code.name, str(error), error.retry_after_s)

    def to_local(self) -> ServingError:
        error = ServingError(self.message)
        error.grpc_code = grpc.StatusCode[self.code]
        error.retry_after_s = self.retry_after_s
        return error


def is_final(event: object) -> bool:
    """A stream's last event: every modality's final event names the replica that made it
    (a `replica` field), so no list of final types needs keeping here."""
    return is_dataclass(event) and any(f.name == "replica" for f in fields(event))
