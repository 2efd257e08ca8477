"""How the bridge reaches its gRPC server: the channel's credentials (plaintext, TLS or
mTLS), and whose key each call carries. ("Upstream" is a foreign model server, which the
server may call; the bridge's server is its own.)

The caller's identity is passed on as the caller's own bearer key: the server checks it
again, so a caller gets through the bridge exactly what it may get directly, and the
server trusts nothing the bridge merely asserts. The bridge's own calls (the limits at
start, /readyz) carry the bridge's key (`--api-key`), or its client certificate.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path

import grpc

from genserve.bridge.settings import GrpcTls
from genserve.contract.metadata import AUTHORIZATION

# The HTTP caller's Authorization header, set by the auth middleware for the request.
caller_authorization_var: ContextVar[str | None] = ContextVar("caller_authorization", default=None)


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def channel_credentials(tls: GrpcTls) -> grpc.ChannelCredentials | None:
    if not tls.on:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_certificates),
        private_key=_read(tls.client_key_file),
        certificate_chain=_read(tls.client_cert_file),
    )


def caller_authorization() -> tuple[tuple[str, str], ...]:
    value = caller_authorization_var.get()
    return ((AUTHORIZATION, value),) if value else ()


def own_authorization(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, f"Bearer {api_key}"),) if api_key else ()
