"""How to reach the server: target, TLS, API key, message size and retry policy; the
call metadata every request carries. Shared by the sync and async transports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc

from genserve.contract.metadata import AUTHORIZATION, REQUEST_ID

from . import defaults
from .retry import RetryPolicy


@dataclass(frozen=True)
class ConnectionOptions:
    target: str = defaults.DEFAULT_TARGET
    tls: bool = False
    root_certificates: bytes | None = None
    api_key: str | None = None
    max_message_mb: int = defaults.MAX_MESSAGE_MB
    certificate_chain: bytes | None = None  # the client's certificate, for mTLS
    private_key: bytes | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

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

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        pairs = [(REQUEST_ID, request_id)]
        if self.api_key:
            pairs.append((AUTHORIZATION, f"Bearer {self.api_key}"))
        return tuple(pairs)


def new_request_id() -> str:
    return uuid.uuid4().hex
