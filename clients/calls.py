"""What the sync and async clients share: the kinds of call a spec can make, per-call
options, and the base of every client and of every calls object.

A client reaches a modality three ways, all from the table of specs:

    gs.media_calls(IMAGE).generate("a room", num_inference_steps=4)  # typed by IMAGE
    gs["image"].generate(...)   # by name or alias, or gs.calls(spec): chosen at run time
    gs.image.generate(...)      # the same, as an attribute ("text_to_image" for
                                # "text-to-image")

The typed accessors (media_calls, text_calls, transcript_calls, pieces_calls,
unary_calls) take the spec's ParamSpec, so an editor completes the proto's fields and
mypy checks them; the spec's type does not say its interaction, so that choice is the
caller's (checked here at run time). The by-name forms are typed Any.

A text stream whose piece has no dedicated fold (a new modality's "caption", say) makes
pieces calls: its pieces as plain fields, its text joined by the spec's `join`. Any text
stream may be called that way (`pieces_calls(TRANSCRIPTION)`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, ParamSpec, Self

from google.protobuf.message import Message

from genserve.contract import Interaction, ModalitySpec, spec_for

from . import defaults
from .channel import ConnectionOptions, new_request_id
from .folds import ProgressCallback
from .request import build_request
from .retry import RetryPolicy

P = ParamSpec("P")


class Kind(StrEnum):
    """The shape of a call, and the name of the accessor that makes it (`<kind>_calls`)."""

    MEDIA = "media"  # header, progress, chunks, final -> MediaResult
    TEXT = "text"  # text deltas, final -> TextResult
    TRANSCRIPT = "transcript"  # segments, final -> Transcript
    PIECES = "pieces"  # any other text stream: pieces as plain fields, final -> PiecesResult
    UNARY = "unary"  # one reply, as plain fields


# The text-stream pieces with a fold of their own; any other piece makes pieces calls.
PIECE_KINDS = {"delta": Kind.TEXT, "segment": Kind.TRANSCRIPT}


def kind_of(spec: ModalitySpec[Any, Any]) -> Kind:
    if spec.interaction is Interaction.MEDIA_STREAM:
        return Kind.MEDIA
    if spec.interaction is Interaction.UNARY:
        return Kind.UNARY
    return PIECE_KINDS.get(spec.piece, Kind.PIECES)


def expect(spec: ModalitySpec[P, Any], kind: Kind) -> ModalitySpec[P, Any]:
    """The spec, if it can make this kind of call: its own kind, or pieces for any text
    stream (the generic fold reads every one); TypeError otherwise."""
    actual = kind_of(spec)
    generic = kind is Kind.PIECES and spec.interaction is Interaction.TEXT_STREAM
    if actual is not kind and not generic:
        raise TypeError(f"{spec.name} makes {actual.value} calls: use {actual.value}_calls()")
    return spec


@dataclass(frozen=True)
class CallOptions:
    timeout: float | None = None  # seconds; None: the spec's sdk_timeout_s
    request_id: str | None = None  # None: a fresh one per call
    on_progress: ProgressCallback | None = None  # media: each progress event


@dataclass(frozen=True)
class Rpc:
    path: str
    reply_type: type[Message]


def rpc_of(spec: ModalitySpec[Any, Any]) -> Rpc:
    return Rpc(spec.rpc_path, spec.event_type)


@dataclass(frozen=True)
class Prepared:
    """One call, ready to send."""

    rpc: Rpc
    request: Message
    timeout: float
    request_id: str


class BaseCalls(Generic[P]):
    """One modality's calls on one client, with options; immutable."""

    def __init__(
        self, client: Any, spec: ModalitySpec[P, Any], options: CallOptions | None = None
    ) -> None:
        self._client = client
        self.spec = spec
        self.options = options or CallOptions()

    def with_options(
        self,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Self:
        """A copy whose calls use these options (those not given stay as they were)."""
        old = self.options
        changed = copy.copy(self)
        changed.options = CallOptions(
            timeout if timeout is not None else old.timeout,
            request_id if request_id is not None else old.request_id,
            on_progress if on_progress is not None else old.on_progress,
        )
        return changed

    def _prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Prepared:
        return Prepared(
            rpc_of(self.spec),
            build_request(self.spec, args, kwargs),
            self.options.timeout or self.spec.sdk_timeout_s,
            self.options.request_id or new_request_id(),
        )


class ClientBase:
    """Connection options, and modalities by name; the transports add the I/O."""

    _grpc: ClassVar[Any]  # grpc or grpc.aio: where the transport's channels come from

    def __init__(
        self,
        target: str = defaults.DEFAULT_TARGET,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        api_key: str | None = None,
        max_message_mb: int = defaults.MAX_MESSAGE_MB,
        max_retries: int = defaults.MAX_RETRIES,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        max_retry_after_s: float = defaults.MAX_RETRY_AFTER_S,
    ) -> None:
        """`tls` (implied by any certificate given): `root_certificates` verify the server
        (default: the system's); `certificate_chain` and `private_key` identify this
        client to a server that asks for client certificates (mTLS)."""
        self.options = ConnectionOptions(
            target,
            tls,
            root_certificates,
            api_key,
            max_message_mb,
            certificate_chain,
            private_key,
            RetryPolicy(max_retries, max_retry_after_s),
        )
        target, options = self.options.target, self.options.channel_options()
        if self.options.tls:
            credentials = self.options.credentials()
            self._channel = self._grpc.secure_channel(target, credentials, options)
        else:
            self._channel = self._grpc.insecure_channel(target, options)

    def calls(self, spec: ModalitySpec[Any, Any] | str) -> Any:
        """A modality's calls object, by spec, name or alias, of the kind its spec says."""
        resolved = spec_for(spec) if isinstance(spec, str) else spec
        return getattr(self, f"{kind_of(resolved).value}_calls")(resolved)

    def __getitem__(self, spec: ModalitySpec[Any, Any] | str) -> Any:
        return self.calls(spec)

    def __getattr__(self, name: str) -> Any:
        # Only for names not found otherwise: a modality's name or alias.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            spec = spec_for(name.replace("_", "-"))
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__!r} has no attribute {name!r}, nor a modality of that name"
            ) from None
        return self.calls(spec)
