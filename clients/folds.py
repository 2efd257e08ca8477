"""Stream assembly, without I/O: a fold is fed a stream's events one by one, hands back
the piece worth showing the caller as it comes (a text delta, a transcript segment, a
media event) and, at the end, the whole result.

Which fold a spec gets follows its interaction and, for text streams, its piece (the
event's oneof case that carries text): no per-modality code. Text deltas and transcript
segments have folds of their own; any other piece gets PiecesFold, its pieces as plain
fields. Every text stream's whole text is its pieces' texts joined by the spec's `join`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from genserve.contract.events import (
    Chunk,
    Final,
    Header,
    MediaEvent,
    Progress,
    media_event_from_pb,
    timings_from_pb,
)
from genserve.contract.modalities.transcription import Segment
from genserve.contract.spec import ModalitySpec, enum_names, message_to_fields

from .errors import IntegrityError, InternalError
from .results import MediaResult, PiecesResult, TextResult, Transcript

PieceT = TypeVar("PieceT", covariant=True)
ResultT = TypeVar("ResultT", covariant=True)
Piece = TypeVar("Piece")
Result = TypeVar("Result")
ProgressCallback = Callable[[Progress], None]
Join = Callable[[Iterable[str]], str]  # a spec's `join`: the whole text from its pieces' texts


class Fold(Protocol[PieceT, ResultT]):
    def feed(self, event: Any) -> PieceT | None:
        """The piece this event brings the caller, if any."""
        ...

    def result(self) -> ResultT: ...


# A fold's constructor: (request_id, on_progress, collect) -> Fold.
FoldFactory = Callable[[str, ProgressCallback | None, bool], Fold[PieceT, ResultT]]


def _case(event: Message) -> str | None:
    """Which case of the event's oneof is set (every stream event is one oneof)."""
    return event.WhichOneof(event.DESCRIPTOR.oneofs[0].name)


def _no_final(request_id: str) -> InternalError:
    message = "the stream ended without its final event"
    return InternalError(grpc.StatusCode.INTERNAL, message, request_id)


class MediaFold:
    """Header, progress, chunks, final -> MediaResult; the bytes must match the size and
    sha256 the final event announces. `collect=False` (streaming to the caller) keeps
    no bytes: only the digest is computed."""

    def __init__(
        self, request_id: str, on_progress: ProgressCallback | None = None, collect: bool = True
    ) -> None:
        self._request_id = request_id
        self._on_progress = on_progress
        self._collect = collect
        self._chunks: list[bytes] = []
        self._digest = hashlib.sha256()
        self._size = 0
        self._header: Header | None = None
        self._final: Final | None = None

    def feed(self, event: Any) -> MediaEvent:
        media_event = media_event_from_pb(event)
        if isinstance(media_event, Chunk):
            self._digest.update(media_event.data)
            self._size += len(media_event.data)
            if self._collect:
                self._chunks.append(media_event.data)
        elif isinstance(media_event, Progress):
            if self._on_progress is not None:
                self._on_progress(media_event)
        elif isinstance(media_event, Header):
            self._header = media_event
        else:
            self._check(media_event)
            self._final = media_event
        return media_event

    def _check(self, final: Final) -> None:
        digest = self._digest.hexdigest()
        if digest != final.sha256 or self._size != final.total_bytes:
            raise IntegrityError(
                grpc.StatusCode.DATA_LOSS,
                f"received {self._size} bytes with sha256 {digest}; the server sent "
                f"{final.total_bytes} bytes with sha256 {final.sha256}",
                self._request_id,
            )

    def result(self) -> MediaResult:
        if self._final is None or self._header is None:
            raise _no_final(self._request_id)
        assert self._collect, "a fold that streamed its chunks has no file to return"
        final, header = self._final, self._header
        if final.vertex_count or final.face_count:  # known only once the file is made (mesh)
            header = replace(header, vertex_count=final.vertex_count, face_count=final.face_count)
        return MediaResult(
            data=b"".join(self._chunks),
            header=header,
            sha256=final.sha256,
            seed=final.seed,
            timings=final.timings,
            request_id=self._request_id,
        )


class _PieceFold(Generic[Piece, Result]):
    """A text stream: pieces (the oneof case the spec names its `piece`), then a final.
    `join` and `piece` are the spec's (see piece_fold)."""

    def __init__(
        self,
        request_id: str,
        on_progress: ProgressCallback | None = None,
        collect: bool = True,
        *,
        join: Join = "".join,
        piece: str = "",
    ) -> None:
        self._request_id = request_id
        self._join = join
        self._piece_case = piece
        self._pieces: list[Piece] = []
        self._final: Any = None

    def feed(self, event: Any) -> Piece | None:
        if _case(event) == "final":
            self._final = event.final
            return None
        piece = self._piece(event)
        if piece is not None:
            self._pieces.append(piece)
        return piece

    def result(self) -> Result:
        if self._final is None:
            raise _no_final(self._request_id)
        return self._result(self._final)

    def _piece(self, event: Any) -> Piece | None:
        raise NotImplementedError

    def _result(self, final: Any) -> Result:
        raise NotImplementedError


class TextFold(_PieceFold[str, TextResult]):
    """Deltas, then a final event (finish reason, usage, seed) -> TextResult."""

    def _piece(self, event: Any) -> str | None:
        text: str = event.delta.text
        return text or None

    def _result(self, final: Any) -> TextResult:
        reasons = enum_names(final.DESCRIPTOR.fields_by_name["finish_reason"].enum_type)
        return TextResult(
            text=self._join(self._pieces),
            finish_reason=reasons.get(final.finish_reason, "stop"),
            prompt_tokens=final.usage.prompt_tokens,
            completion_tokens=final.usage.completion_tokens,
            seed=final.seed,
            timings=timings_from_pb(final.timings),
            request_id=self._request_id,
        )


class TranscriptFold(_PieceFold[Segment, Transcript]):
    """Segments (start, end, text), then a final event (language, duration) -> Transcript."""

    def _piece(self, event: Any) -> Segment:
        return Segment(event.segment.start_s, event.segment.end_s, event.segment.text)

    def _result(self, final: Any) -> Transcript:
        return Transcript(
            text=self._join(s.text for s in self._pieces),
            segments=tuple(self._pieces),
            language=final.language,
            language_probability=final.language_probability,
            duration_s=final.duration_s,
            timings=timings_from_pb(final.timings),
            request_id=self._request_id,
        )


class PiecesFold(_PieceFold[dict[str, Any], PiecesResult]):
    """Any other text stream: each piece (the spec's `piece` case; any case but the final
    when it names none) as plain fields, then a final event -> PiecesResult, whose text is
    the pieces' `text` fields joined by the spec's `join`."""

    def _piece(self, event: Any) -> dict[str, Any] | None:
        case = _case(event)
        if case is None or (self._piece_case and case != self._piece_case):
            return None
        value = getattr(event, case)
        return message_to_fields(value) if isinstance(value, Message) else {case: value}

    def _result(self, final: Any) -> PiecesResult:
        return PiecesResult(
            text=self._join(piece_text(piece) for piece in self._pieces if "text" in piece),
            pieces=tuple(self._pieces),
            final=message_to_fields(final),
            request_id=self._request_id,
        )


def piece_fold(
    fold: type[_PieceFold[Piece, Result]], spec: ModalitySpec[Any, Any]
) -> FoldFactory[Piece, Result]:
    """A text-stream fold for the spec: its piece, its join."""
    return partial(fold, join=spec.join, piece=spec.piece)


def piece_text(piece: dict[str, Any]) -> str:
    """A generic piece's text: its `text` field ("" when it has none)."""
    text = piece.get("text", "")
    return text if isinstance(text, str) else ""


def joined_increments(join: Join, texts: Iterable[str]) -> Iterator[str]:
    """What each text adds to the whole (the join of the texts so far), for showing as it
    comes: one after another they spell the joined text, separators included. A join that
    changes what was already shown restarts on a new line with the piece's text."""
    seen: list[str] = []
    shown = ""
    for text in texts:
        seen.append(text)
        whole = join(seen)
        added = whole[len(shown) :] if whole.startswith(shown) else "\n" + text
        shown = whole
        if added:
            yield added


def reply_fields(reply: Message) -> dict[str, Any]:
    """A unary reply as plain Python: its set fields, enums by their short names."""
    return message_to_fields(reply)
