"""TLS and mTLS for real, with certificates this test makes: the SDK, the CLI and the
bridge (HTTPS in front, TLS behind) round-trip; plaintext and strangers fail cleanly."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from genserve.bridge.settings import BridgeSettings, GrpcTls
from genserve.client import GenServe, PermissionDeniedError, UnavailableError
from genserve.client.cli import main as cli_main
from genserve.server.auth.keys import KeyEntry, KeysFile, create_key, load_keys, save_keys
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.settings import AuthSettings, TlsSettings
from tests.bridge_thread import BridgeThread
from tests.certs import Authority, Pem
from tests.server_thread import ServerThread, make_settings

CALL_TIMEOUT_S = 120


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: tuple[Path, Path]
    client_a: Pem  # unlisted in the keys file: its subject is its identity
    client_b: Pem  # listed, text only
    client_b_subject: str
    stranger: Pem  # signed by another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    authority = Authority()
    ca = directory / "ca.pem"
    ca.write_bytes(authority.pem)
    client_b = authority.issue("svc-b", server=False)
    from cryptography import x509

    subject = x509.load_pem_x509_certificate(client_b.cert).subject.rfc4514_string()
    return Certs(
        ca=ca,
        server=authority.issue("localhost", server=True).write(directory, "server"),
        client_a=authority.issue("svc-a", server=False),
        client_b=client_b,
        client_b_subject=subject,
        stranger=Authority("another CA").issue("svc-a", server=False),
    )


def text_only() -> Manifest:
    return Manifest(text=load_manifest(manifest_path("tiny")).text[:1])


@pytest.fixture(scope="module")
def api_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, create_key(path, "tls-user")


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs, api_key: tuple[Path, str]
) -> Iterator[ServerThread]:
    cert, key = certs.server
    settings = make_settings(
        tmp_path_factory.mktemp("var"),
        keys_file=api_key[0],
        tls=TlsSettings(cert_file=cert, key_file=key),
        auth=AuthSettings(watch_s=0),
    )
    server = ServerThread(settings, text_only()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[ServerThread]:
    keys_file = tmp_path_factory.mktemp("mtls-keys") / "keys.json"
    entry = KeyEntry(id="svc-b", subject=certs.client_b_subject, modalities=("text",))
    save_keys(keys_file, KeysFile(keys=[entry]))
    cert, key = certs.server
    settings = make_settings(
        tmp_path_factory.mktemp("var"),
        keys_file=keys_file,
        tls=TlsSettings(cert_file=cert, key_file=key, client_ca_file=certs.ca),
        auth=AuthSettings(watch_s=0),
    )
    server = ServerThread(settings, text_only()).start()
    yield server
    server.stop()


def target(server: ServerThread) -> str:
    return f"localhost:{server.port}"


# -- TLS --------------------------------------------------------------------------------


def test_sdk_round_trip_over_tls_with_an_api_key(
    tls_server: ServerThread, certs: Certs, api_key: tuple[Path, str]
) -> None:
    with GenServe(
        target(tls_server), tls=True, root_certificates=certs.ca.read_bytes(), api_key=api_key[1]
    ) as gs:
        result = gs.text.with_options(request_id="tls-sdk").generate(
            "Hi", max_new_tokens=2, do_sample=False
        )
        assert result.completion_tokens == 2
        assert gs.health() == "SERVING"
    assert tls_server.wait_for_usage_row("tls-sdk")["key_id"] == "tls-user"


def test_cli_round_trip_over_tls(
    tls_server: ServerThread,
    certs: Certs,
    api_key: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--target", target(tls_server), "--root-certificates", str(certs.ca)]
    argv += ["--api-key", api_key[1], "--json"]
    argv += ["text", "Hi", "--max-new-tokens", "2", "--no-do-sample"]
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["completion_tokens"] == 2


def test_a_plaintext_client_against_the_tls_port_fails_cleanly(
    tls_server: ServerThread, certs: Certs
) -> None:
    with (
        GenServe(target(tls_server), max_retries=0) as gs,
        pytest.raises(UnavailableError),
    ):
        gs.health(timeout=10)
    with grpc.insecure_channel(target(tls_server)) as channel:
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as error:
            health(b"", timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    # ... and the server goes on serving TLS callers.
    with GenServe(target(tls_server), root_certificates=certs.ca.read_bytes()) as gs:
        assert gs.health() == "SERVING"


def test_a_client_that_does_not_trust_the_server_fails_cleanly(
    tls_server: ServerThread, certs: Certs
) -> None:
    stranger_ca = Authority("not the server's CA").pem
    with (
        GenServe(target(tls_server), root_certificates=stranger_ca, max_retries=0) as gs,
        pytest.raises(UnavailableError),
    ):
        gs.health(timeout=10)


# -- mTLS -------------------------------------------------------------------------------


def mtls_client(server: ServerThread, certs: Certs, client: Pem | None) -> GenServe:
    return GenServe(
        target(server),
        root_certificates=certs.ca.read_bytes(),
        certificate_chain=client.cert if client else None,
        private_key=client.key if client else None,
        max_retries=0,
    )


def test_mtls_the_client_certificate_is_the_caller(mtls_server: ServerThread, certs: Certs) -> None:
    with mtls_client(mtls_server, certs, certs.client_a) as gs:
        gs.text.with_options(request_id="mtls-a").generate("Hi", max_new_tokens=2, do_sample=False)
    key_id = mtls_server.wait_for_usage_row("mtls-a")["key_id"]
    assert key_id.startswith("cert:") and "CN=svc-a" in key_id


def test_mtls_a_listed_subject_gets_its_entrys_rules(
    mtls_server: ServerThread, certs: Certs
) -> None:
    with mtls_client(mtls_server, certs, certs.client_b) as gs:
        gs.text.with_options(request_id="mtls-b").generate("Hi", max_new_tokens=2, do_sample=False)
        with pytest.raises(PermissionDeniedError):
            gs.image.generate("a red square", num_inference_steps=1)
    assert mtls_server.wait_for_usage_row("mtls-b")["key_id"] == "svc-b"


def test_mtls_no_certificate_or_a_strangers_fails_cleanly(
    mtls_server: ServerThread, certs: Certs
) -> None:
    for client in (None, certs.stranger):
        with mtls_client(mtls_server, certs, client) as gs, pytest.raises(UnavailableError):
            gs.health(timeout=10)


def test_cli_round_trip_over_mtls(
    mtls_server: ServerThread, certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = certs.client_a.write(tmp_path, "client")
    argv = ["--target", target(mtls_server), "--root-certificates", str(certs.ca)]
    argv += ["--client-cert", str(cert), "--client-key", str(key), "--json"]
    assert cli_main([*argv, "text", "Hi", "--max-new-tokens", "2", "--no-do-sample"]) == 0
    assert json.loads(capsys.readouterr().out)["completion_tokens"] == 2


# -- the bridge: HTTPS in front, mTLS behind --------------------------------------------


def test_bridge_serves_https_and_reaches_the_server_over_mtls(
    mtls_server: ServerThread, certs: Certs, tmp_path: Path
) -> None:
    client_cert, client_key = certs.client_a.write(tmp_path, "bridge")
    https_cert, https_key = certs.server
    settings = BridgeSettings(
        grpc_target=target(mtls_server),
        ssl_certfile=https_cert,
        ssl_keyfile=https_key,
        grpc_tls=GrpcTls(
            root_certificates=certs.ca,
            client_cert_file=client_cert,
            client_key_file=client_key,
        ),
    )
    bridge = BridgeThread(settings).start()
    try:
        assert bridge.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(certs.ca))
        with httpx.Client(base_url=bridge.url, verify=context, timeout=CALL_TIMEOUT_S) as http:
            response = http.get(
                "/generate/text",
                params={"prompt": "Hi", "max_new_tokens": 2, "do_sample": "false"},
                headers={"X-Request-ID": "bridge-mtls"},
            )
            assert response.status_code == 200 and response.text
            assert http.get("/readyz").json()["ready"] is True
        key_id = mtls_server.wait_for_usage_row("bridge-mtls")["key_id"]
        assert "CN=svc-a" in key_id  # the bridge's certificate, with no key of the caller's
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port
            httpx.get(bridge.url.replace("https://", "http://") + "/healthz", timeout=10)
    finally:
        bridge.stop()


def test_keys_file_roundtrip_keeps_subject_entries(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_keys(path, KeysFile(keys=[KeyEntry(id="svc", subject="CN=svc")]))
    assert load_keys(path).keys[0].subject == "CN=svc"
