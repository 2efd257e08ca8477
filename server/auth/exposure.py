"""Private by default: where the server and the bridge bind, and the gRPC port's TLS.

No auth (no keys file, no client CA): loopback only, said in the log. Another address
without auth takes an explicit `--insecure-no-auth`.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from genserve.server.settings import TlsSettings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


class ExposureError(ValueError):
    """A setting that would expose the service unsafely, or a half-configured TLS."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_host(host: str | None, auth_on: bool, insecure_no_auth: bool, what: str) -> str:
    if host is None:
        if auth_on:
            return ALL_INTERFACES
        logger.warning(
            "%s: no keys file, so listening on loopback (%s) only; give --keys-file to serve "
            "other hosts",
            what,
            LOOPBACK,
        )
        return LOOPBACK
    if not auth_on and not is_loopback(host):
        if not insecure_no_auth:
            raise ExposureError(
                f"{what}: refusing to listen on {host} without auth: give --keys-file "
                "(genserve keys create NAME), or --insecure-no-auth to serve anyone"
            )
        logger.warning("%s: listening on %s with NO AUTH (--insecure-no-auth)", what, host)
    return host


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """None for plaintext; mTLS (client certificates required) when a client CA is set."""
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None:
            raise ExposureError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ExposureError("TLS needs both tls.cert_file and tls.key_file")
    client_ca = _read(tls.client_ca_file)
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
