"""Channel options, call metadata and the retry rule, shared by the sync and async clients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc

from genserve.client.defaults import (
    API_KEY_METADATA,
    MAX_MESSAGE_MB,
    MAX_RETRIES,
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

    def channel_options(self) -> list[tuple[str, int]]:
        size = self.max_message_mb * 1024 * 1024
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

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


def backoff_s(attempt: int) -> float:
    return float(min(RETRY_BACKOFF_S * 2**attempt, RETRY_BACKOFF_MAX_S))
