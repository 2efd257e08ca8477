"""Channel options, call metadata and the retry rule, shared by the sync and async clients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc

from genserve.client.defaults import (
    API_KEY_METADATA,
    MAX_MESSAGE_MB,
    MAX_RETRIES,
    MAX_RETRY_AFTER_S,
    RETRY_BACKOFF_MAX_S,
    RETRY_BACKOFF_S,
)

REQUEST_ID_METADATA = "x-request-id"


@dataclass(frozen=True)
class ConnectionOptions:
    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    api_key: str | None = None
    max_message_mb: int = MAX_MESSAGE_MB
    max_retries: int = MAX_RETRIES
    certificate_chain: bytes | None = None  # the client's certificate, for mTLS
    private_key: bytes | None = None
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def __post_init__(self) -> None:
        # A certificate to verify the server with, or to show it, means TLS.
        if self.root_certificates is not None or self.certificate_chain is not None:
            object.__setattr__(self, "tls", True)

    def channel_options(self) -> list[tuple[str, int]]:
        size = self.max_message_mb * 1024 * 1024
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def retry_delay(
        self, error: grpc.RpcError, received_anything: bool, attempt: int
    ) -> float | None:
        """Seconds to wait before trying again, or None to give up now."""
        if should_retry(error, received_anything, attempt, self.max_retries):
            return backoff_s(attempt)
        if (
            error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            and not received_anything
            and attempt < self.max_retries
        ):
            wait = server_retry_after_s(error)
            if wait is not None and wait <= self.max_retry_after_s:
                return wait
        return None

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        pairs = [(REQUEST_ID_METADATA, request_id)]
        if self.api_key:
            pairs.append((API_KEY_METADATA, f"Bearer {self.api_key}"))
        return tuple(pairs)


def new_request_id() -> str:
    return uuid.uuid4().hex


def should_retry(error: grpc.RpcError, received_anything: bool, attempt: int, limit: int) -> bool:
    """UNAVAILABLE only, and only while nothing has arrived: a retry never repeats output."""
    return (
        error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        and not received_anything
        and attempt < limit
    )


def server_retry_after_s(error: grpc.RpcError) -> float | None:
    """The wait the server named in trailing metadata: `retry-after-ms`, else `retry-after`."""
    trailing = getattr(error, "trailing_metadata", None)
    pairs = dict(trailing() or ()) if callable(trailing) else {}
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = pairs.get(key)
        if isinstance(value, str) and value.isdigit():
            return int(value) * scale
    return None


def backoff_s(attempt: int) -> float:
    return float(min(RETRY_BACKOFF_S * 2**attempt, RETRY_BACKOFF_MAX_S))
