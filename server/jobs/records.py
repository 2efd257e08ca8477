"""A job as plain data: what the job store keeps and the servicer converts to protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from genserve.contract.events import Final, Header, Progress


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # finished, and its artifact deleted after its TTL

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class JobError:
    code: str  # a gRPC status code's name
    message: str


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str  # the caller's identity (key id); "" on a server without keys
    modality: str
    model: str
    state: JobState
    request: bytes  # the modality's proto request, serialized, its seed filled in
    seed: int
    request_id: str
    idempotency_key: str
    created_at: float
    ttl_s: float
    expires_at: float
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 0
    header: Header | None = None
    progress: Progress | None = None
    final: Final | None = None
    error: JobError | None = None
    bytes_written: int = 0  # readable bytes of this attempt's artifact
    # The first byte where a re-run after a restart differed from what was stored (-1:
    # none): a watcher that had read past it must start again.
    diverged_at: int = -1
    # The server that holds the job (queued in its memory, or running there) and until
    # when: past it, with the store shared, another server takes the job over.
    lease_owner: str = ""
    lease_until: float = 0.0
    cancel_requested: bool = False  # by a server that does not run it: its holder stops it
    sequence: int = 0  # the store's insertion order (List pages)
