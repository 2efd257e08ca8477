"""What crosses between the server and a worker process: plain, picklable values.

Requests and events are the engine contract's own (the same values the Ray wire carries);
errors cross as ReplicaError, a ServingError reduced to its code and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genserve.contract import Modality
from genserve.server.engine.contract import EngineStats
from genserve.server.manifest import ModelSpec
from genserve.server.ray_serve.wire import ReplicaError
from genserve.server.settings import Settings

# -- server to worker -------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """The first message: which model to load, with the server's settings."""

    modality: Modality
    spec: ModelSpec
    settings: Settings


@dataclass(frozen=True)
class Generate:
    stream: int  # the server's id for this request's stream, unique per worker
    request: Any
    seconds_left: float | None  # the caller's deadline, as a duration
    request_id: str  # for the worker's log lines and the file's generation record
    request_time: float | None = None  # the record's time, where it is not now (a job's)


@dataclass(frozen=True)
class Credit:
    """The server has handed `events` more of the stream's events to its caller."""

    stream: int
    events: int


@dataclass(frozen=True)
class Cancel:
    stream: int


@dataclass(frozen=True)
class Sync:
    """Answer with fresh stats (after every message sent before this one)."""

    token: int


@dataclass(frozen=True)
class Close:
    """Stop running work at its next step, release the model and exit."""

    wait_s: float


# -- worker to server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    memory_bytes: int
    pid: int


@dataclass(frozen=True)
class LoadFailed:
    reason: str  # "ExceptionType: message"; the traceback is in the worker's log


@dataclass(frozen=True)
class Event:
    stream: int
    event: Any


@dataclass(frozen=True)
class End:
    """The stream is over: cleanly (error None) or with the engine's refusal."""

    stream: int
    error: ReplicaError | None = None
    failure: str | None = None  # an unexpected exception's type: an internal error


@dataclass(frozen=True)
class Stats:
    stats: EngineStats
    ready: bool
    sync: int = 0  # the Sync it answers; 0: a periodic report


ToWorker = Start | Generate | Credit | Cancel | Sync | Close
FromWorker = Ready | LoadFailed | Event | End | Stats
