"""Re-attaching to a job's stream, without I/O: a cursor remembers the next byte it needs,
drops what a re-attached stream replays (the header, the last progress, bytes it already
has), checks each chunk's offset, digests the bytes, and says what to do when a stream
fails: re-attach from its offset after a backoff, start again from 0, ask the job, or
give up. The transports (jobs.py, async_jobs.py) send the calls and sleep.

A Watch or a Download that breaks (UNAVAILABLE: the server restarting; a stream that ends
before its final) is called again from the cursor's offset. ABORTED means the job was run
again after a restart and its bytes changed before that offset: what was received is void,
so the cursor starts again from 0 and hands the consumer a `Restarted` event (a file
being written is truncated).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

import grpc

from genserve.contract.events import Chunk, Final, Header, MediaEvent, Progress

from .errors import IntegrityError
from .retry import backoff_s

# Failures in a row, with nothing new received between them, before a stream gives up:
# with the backoff (0.5 s doubled, at most 8 s) about 40 s, enough for a server restart.
REATTACH_MAX_FAILURES = 8
# Restarts from byte 0 (ABORTED) one stream accepts: each means another run of the job.
MAX_RESTARTS = 3


@dataclass(frozen=True)
class Restarted:
    """The job restarted on the server and its output changed: the `discarded_bytes`
    received so far are void and the stream starts again from byte 0 (a new header,
    then every chunk). A consumer writing a file truncates it."""

    discarded_bytes: int


JobEvent: TypeAlias = MediaEvent | Restarted


class Action(StrEnum):
    REATTACH = "reattach"  # call again from the cursor's offset after `delay_s`
    CHECK = "check"  # ask the job (Get): re-attach unless it ended; then raise the error
    RAISE = "raise"  # give up: raise the stream's error


@dataclass(frozen=True)
class Step:
    action: Action
    delay_s: float = 0.0
    restarted: Restarted | None = None  # set when the stream starts again from 0


RAISE = Step(Action.RAISE)


class JobCursor:
    """One consumer's place in one job's bytes. `offset` is where the next call starts;
    `prefix_is_local` says bytes before it came from a file of the consumer's (a resumed
    download), which a server that has fewer (OUT_OF_RANGE) proves to be another file's."""

    def __init__(
        self,
        offset: int = 0,
        *,
        verifiable: bool | None = None,
        prefix_is_local: bool = False,
        max_failures: int = REATTACH_MAX_FAILURES,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        self.offset = offset
        # The sha256 can be checked only with every byte from 0 (fed here or as a prefix).
        self._verifiable = offset == 0 if verifiable is None else verifiable
        self._digest = hashlib.sha256()
        self._prefix_is_local = prefix_is_local
        self._max_failures = max_failures
        self._max_restarts = max_restarts
        self._failures = 0
        self.restarts = 0
        self.header: Header | None = None
        self.progress: Progress | None = None
        self.final: Final | None = None

    def feed_prefix(self, data: bytes) -> None:
        """Bytes from 0 the consumer already has (a partial file), in blocks of any size;
        a cursor made at offset 0 with them digests the whole file."""
        self._digest.update(data)
        self.offset += len(data)

    @property
    def done(self) -> bool:
        return self.final is not None

    # -- events -------------------------------------------------------------------------

    def feed(self, event: MediaEvent) -> MediaEvent | None:
        """The event as the consumer should see it, or None for a replayed one."""
        if isinstance(event, Header):
            if self.header is not None:  # every (re-)attached Watch starts with it
                return None
            self.header = event
            return event
        if isinstance(event, Progress):
            if event == self.progress:  # a re-attached Watch repeats the last one
                return None
            self.progress = event
            self._failures = 0
            return event
        if isinstance(event, Chunk):
            return self.feed_chunk(event)
        self.finish(event)
        return event

    def feed_chunk(self, chunk: Chunk) -> Chunk | None:
        """The chunk's bytes not received yet, at their offset; None if it has none."""
        if chunk.offset > self.offset:
            raise _integrity(f"a chunk at byte {chunk.offset}; the next byte due is {self.offset}")
        end = chunk.offset + len(chunk.data)
        if end <= self.offset:
            return None  # bytes already received
        data = chunk.data[self.offset - chunk.offset :]
        fresh = Chunk(data, self.offset)
        self._digest.update(data)
        self.offset = end
        self._failures = 0
        return fresh

    def finish(self, final: Final) -> None:
        """The job's final (from the stream, or from Get after a Download): the bytes
        received must be its size and, when every byte from 0 passed here, its sha256."""
        if self.offset != final.total_bytes:
            raise _integrity(f"received {self.offset} bytes; the job made {final.total_bytes}")
        digest = self._digest.hexdigest()
        if self._verifiable and digest != final.sha256:
            raise _integrity(f"the bytes' sha256 is {digest}; the job's is {final.sha256}")
        self.final = final

    # -- failures -----------------------------------------------------------------------

    def on_error(self, code: grpc.StatusCode) -> Step:
        """What to do after a stream failed with this status."""
        if code == grpc.StatusCode.ABORTED:
            return self._restart()
        if code == grpc.StatusCode.OUT_OF_RANGE and self._prefix_is_local and self.offset:
            return self._restart()  # the local file is longer than the job's: not its prefix
        # The server going away, or this call cancelled: re-attach, unless the job itself
        # ended that way (a failed job's stream ends with its error's code).
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return self._backoff(Action.CHECK)
        return RAISE

    def on_end(self) -> Step | None:
        """The stream ended with OK: None when the final came, else it was dropped."""
        return None if self.done else self._backoff(Action.REATTACH)

    def on_mismatch(self) -> Step:
        """Downloaded bytes that are not the final's (a job re-run whose Download could not
        say so): start again from 0, as for ABORTED."""
        return self._restart()

    def _backoff(self, action: Action) -> Step:
        if self._failures >= self._max_failures:
            return RAISE
        self._failures += 1
        return Step(action, backoff_s(self._failures - 1))

    def _restart(self) -> Step:
        if self.restarts >= self._max_restarts:
            return RAISE
        restarted = Restarted(discarded_bytes=self.offset)
        self.restarts += 1
        self.offset = 0
        self._verifiable = True
        self._digest = hashlib.sha256()
        self.header = self.progress = self.final = None
        return Step(Action.REATTACH, 0.0, restarted)


def _integrity(message: str) -> IntegrityError:
    return IntegrityError(grpc.StatusCode.DATA_LOSS, message, None)
