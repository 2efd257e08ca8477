"""Who may call, over gRPC: API keys checked before any work, refusals with their request
ID and usage row, keys reloaded without a restart, per-key budgets in model units,
brute force refused, private by default, no prompt text in logs."""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from genserve.client import GenServe, PermissionDeniedError, UnauthenticatedError
from genserve.client.cli import main as cli_main
from genserve.server.auth.exposure import ExposureError
from genserve.server.auth.keys import MODALITY_NAMES, create_key, load_keys, revoke_key
from genserve.server.manifest import Manifest, Modality
from genserve.server.settings import AuthSettings, Settings
from genserve.v1 import image_pb2, image_pb2_grpc, models_pb2, models_pb2_grpc
from tests.auth_setup import (
    BUDGET_PROMPT,
    Keys,
    auth_server,
    bearer,
    make_keys,
    refusal,
    together,
)
from tests.media_calls import collect
from tests.server_thread import ServerThread, make_settings, wait_until
from tests.text_calls import greedy


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerThread]:
    thread = auth_server(tmp_path_factory.mktemp("var"), keys.path)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    channel = server.channel()
    yield channel
    channel.close()


def text(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], **fields: Any) -> str:
    """Runs a short greedy text call; returns the request ID the server echoed."""
    from genserve.v1 import text_pb2_grpc

    call = text_pb2_grpc.TextServiceStub(channel).Generate(
        greedy(**{"max_new_tokens": 2, **fields}), metadata=metadata, timeout=120
    )
    list(call)
    return str(dict(call.initial_metadata())["x-request-id"])


def refused_text(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], request_id: str, **fields: object
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as error:
        text(channel, (*metadata, ("x-request-id", request_id)), **fields)
    return refusal(error.value)


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        ("missing", ()),
        ("wrong", (("authorization", "Bearer definitely-wrong-key"),)),
        ("not-bearer", (("authorization", "Basic b3BzOnNlY3JldA=="),)),
    ],
)
def test_a_missing_or_wrong_key_is_unauthenticated_with_its_request_id_and_usage_row(
    server: ServerThread, channel: grpc.Channel, name: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    request_id = f"auth-{name}"
    code, details, _ = refused_text(channel, metadata, request_id)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert request_id in details
    row = server.wait_for_usage_row(request_id)
    assert row["status_code"] == "UNAUTHENTICATED" and row["key_id"] is None
    assert row["completion_tokens"] is None  # refused before any work


def test_a_well_formed_secret_of_a_real_key_id_is_still_refused(
    server: ServerThread, channel: grpc.Channel, keys: Keys
) -> None:
    forged = keys.ops[:-4] + ("AAAA" if not keys.ops.endswith("AAAA") else "BBBB")
    code, _, _ = refused_text(channel, bearer(forged), "auth-forged")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_a_valid_key_is_served_and_its_id_is_logged_never_its_secret(
    server: ServerThread, channel: grpc.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="genserve.access")
    request_id = text(channel, (*bearer(keys.ops), ("x-request-id", "auth-ok")))
    row = server.wait_for_usage_row(request_id)
    assert row["status_code"] == "OK" and row["key_id"] == "ops"
    assert "key=ops" in caplog.text
    assert keys.ops not in caplog.text
    metrics = httpx.get(f"http://127.0.0.1:{server.server.metrics_port}/metrics").text
    assert 'genserve_grpc_requests_by_key_total{code="OK",key="ops"}' in metrics
    assert keys.ops not in metrics


def test_a_text_only_key_is_refused_image_but_served_text(
    server: ServerThread, channel: grpc.Channel, keys: Keys
) -> None:
    stub = image_pb2_grpc.ImageServiceStub(channel)
    request = image_pb2.ImageGenerateRequest(prompt="a red square", num_inference_steps=1)
    with pytest.raises(grpc.RpcError) as error:
        collect(
            stub.Generate(
                request, metadata=(*bearer(keys.writer), ("x-request-id", "auth-403")), timeout=60
            )
        )
    code, details, _ = refusal(error.value)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "writer" in details and "auth-403" in details
    row = server.wait_for_usage_row("auth-403")
    assert row["status_code"] == "PERMISSION_DENIED" and row["key_id"] == "writer"
    assert row["model"] is None  # the servicer never ran
    text(channel, bearer(keys.writer))
    # ... and ModelService's Load/Unload follow the same rule, by the model's name.
    models = models_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        models.UnloadModel(
            models_pb2.UnloadModelRequest(name="tiny-stable-diffusion"),
            metadata=bearer(keys.writer),
            timeout=30,
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_the_sdk_sends_its_key_and_raises_the_refusals(server: ServerThread, keys: Keys) -> None:
    target = f"localhost:{server.port}"
    with GenServe(target, api_key=keys.writer) as gs:
        assert gs.text.generate("hi", max_new_tokens=2, do_sample=False).completion_tokens == 2
        with pytest.raises(PermissionDeniedError) as denied:
            gs.image.generate("a red square", num_inference_steps=1)
        assert denied.value.request_id and denied.value.request_id in denied.value.message
    with GenServe(target, api_key="nope", max_retries=0) as gs, pytest.raises(UnauthenticatedError):
        gs.models()


def test_health_is_open_and_reflection_needs_a_key(channel: grpc.Channel, keys: Keys) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def list_services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=10)
        return [s.name for s in answer.list_services_response.service]

    with pytest.raises(grpc.RpcError) as error:
        list_services(())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "genserve.v1.TextService" in list_services(bearer(keys.ops))


# -- reload -----------------------------------------------------------------------------


def test_a_revoked_key_is_refused_after_a_reload_without_a_restart(
    server: ServerThread, channel: grpc.Channel, keys: Keys
) -> None:
    secret = create_key(keys.path, "temporary")

    async def reload() -> bool:
        return server.server.reload_keys()  # what SIGHUP runs

    assert server.run(reload())
    text(channel, bearer(secret))
    assert revoke_key(keys.path, "temporary")
    text(channel, bearer(secret))  # not reloaded yet: still in force
    assert server.run(reload())
    code, _, _ = refused_text(channel, bearer(secret), "auth-revoked")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    text(channel, bearer(keys.ops))  # the others are untouched


def test_a_broken_keys_file_keeps_the_keys_in_force(
    tmp_path: Path, server: ServerThread, channel: grpc.Channel, keys: Keys
) -> None:
    saved = keys.path.read_bytes()

    async def reload() -> bool:
        return server.server.reload_keys()

    try:
        keys.path.write_text('{"keys": [{"id": "half')
        assert not server.run(reload())
        text(channel, bearer(keys.ops))
    finally:
        keys.path.write_bytes(saved)
        assert server.run(reload())


def test_the_keys_file_watch_picks_up_a_revocation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    secret = create_key(path, "watched")
    server = auth_server(
        tmp_path / "var", path, Manifest(), load=False, auth=AuthSettings(watch_s=0.1)
    )
    try:
        models = models_pb2_grpc.ModelServiceStub(server.channel())

        def list_models() -> grpc.StatusCode:
            try:
                models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
            except grpc.RpcError as error:
                return error.code()  # type: ignore[attr-defined,no-any-return]
            return grpc.StatusCode.OK

        assert list_models() == grpc.StatusCode.OK
        revoke_key(path, "watched")
        wait_until(lambda: list_models() == grpc.StatusCode.UNAUTHENTICATED or None, 30)
    finally:
        server.stop()


# -- budgets ----------------------------------------------------------------------------


def test_a_budget_exhausted_then_refilled_after_the_delay(
    server: ServerThread, channel: grpc.Channel, keys: Keys
) -> None:
    fields = {"prompt": BUDGET_PROMPT, "max_new_tokens": 1}

    def attempt(request_id: str) -> grpc.RpcError | None:
        try:
            text(channel, (*bearer(keys.budgeted), ("x-request-id", request_id)), **fields)
        except grpc.RpcError as error:
            return error
        return None

    outcomes = together(lambda: attempt("budget-1"), lambda: attempt("budget-2"))
    refused = [error for error in outcomes if error is not None]
    assert len(refused) == 1, "the budget covers one of the two"
    code, details, trailing = refusal(refused[0])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in details
    wait_ms = int(trailing["retry-after-ms"])
    assert 0 < wait_ms <= 60_000 and int(trailing["retry-after"]) >= 1
    refused_id = "budget-1" if outcomes[0] is not None else "budget-2"
    row = server.wait_for_usage_row(refused_id)
    assert row["status_code"] == "RESOURCE_EXHAUSTED" and row["key_id"] == "budgeted"
    time.sleep(wait_ms / 1000 + 0.2)
    text(channel, bearer(keys.budgeted), **fields)  # refilled


def test_the_sdk_waits_out_the_budget_delay(server: ServerThread, keys: Keys) -> None:
    with GenServe(f"localhost:{server.port}", api_key=keys.patient) as gs:

        def ask(request_id: str) -> int | None:
            text = gs.text.with_options(request_id=request_id)
            reply = text.generate(BUDGET_PROMPT, max_new_tokens=1)
            return reply.completion_tokens

        assert together(lambda: ask("patient-1"), lambda: ask("patient-2")) == [1, 1]

    def codes() -> list[list[str]] | None:
        rows = [server.usage_rows(f"patient-{i}") for i in (1, 2)]
        listed = sorted([row["status_code"] for row in each] for each in rows)
        return listed if sum(map(len, listed)) == 3 else None  # the last row may lag

    # One was refused once, waited the delay the server named, and was served.
    assert wait_until(codes, 10) == [["OK"], ["RESOURCE_EXHAUSTED", "OK"]]


def test_a_request_larger_than_the_whole_budget_is_invalid(
    channel: grpc.Channel, keys: Keys
) -> None:
    code, details, _ = refused_text(
        channel, bearer(keys.budgeted), "auth-too-big", prompt="x" * 4000, max_new_tokens=1
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "budget" in details


# -- brute force ------------------------------------------------------------------------


def test_repeated_wrong_keys_lock_the_peer_out(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    secret = create_key(path, "real")
    server = auth_server(
        tmp_path / "var",
        path,
        Manifest(),
        load=False,
        auth=AuthSettings(watch_s=0, max_failures=3, lockout_s=600),
    )
    try:
        channel = server.channel()
        models = models_pb2_grpc.ModelServiceStub(channel)
        ask = models_pb2.ListModelsRequest()
        models.ListModels(ask, metadata=bearer(secret), timeout=10)
        for attempt in range(3):
            with pytest.raises(grpc.RpcError) as error:
                models.ListModels(ask, metadata=bearer(f"gsk.real.guess{attempt}"), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # Locked out: even the right key is refused now, with how long to wait.
        with pytest.raises(grpc.RpcError) as error:
            models.ListModels(
                ask, metadata=(*bearer(secret), ("x-request-id", "locked")), timeout=10
            )
        code, details, trailing = refusal(error.value)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "failed attempts" in details
        assert int(trailing["retry-after"]) > 60
        assert server.wait_for_usage_row("locked")["status_code"] == "RESOURCE_EXHAUSTED"
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)  # still open
    finally:
        server.stop()


# -- private by default -----------------------------------------------------------------


def outside_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else str(address)


def test_the_default_bind_address_is_loopback(tmp_path: Path) -> None:
    assert Settings().host is None  # type: ignore[call-arg]
    server = ServerThread(make_settings(tmp_path, host=None), Manifest()).start(load=False)
    try:
        assert server.server.guard.enabled is False
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
        address = outside_address()
        if address is not None:
            with pytest.raises(OSError):
                socket.create_connection((address, server.port), timeout=5).close()
    finally:
        server.stop()


def test_another_address_without_auth_takes_insecure_no_auth(tmp_path: Path) -> None:
    refused = ServerThread(make_settings(tmp_path / "a", host="0.0.0.0"), Manifest())
    with pytest.raises(ExposureError, match="--insecure-no-auth"):
        refused.start(load=False)
    refused.stop()
    allowed = ServerThread(
        make_settings(tmp_path / "b", host="0.0.0.0", insecure_no_auth=True), Manifest()
    ).start(load=False)
    allowed.stop()


def test_metrics_listen_on_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"  # type: ignore[call-arg]


# -- privacy ----------------------------------------------------------------------------


def test_no_prompt_text_in_logs_or_the_usage_log(
    server: ServerThread, channel: grpc.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_prompt = "zebra quartz marmalade 4711"
    text(channel, bearer(keys.ops), prompt=secret_prompt)
    stub = image_pb2_grpc.ImageServiceStub(channel)
    for metadata, steps in ((bearer(keys.writer), 1), (bearer(keys.ops), 10_000)):
        with pytest.raises(grpc.RpcError):  # refused: permission; out of bounds
            collect(
                stub.Generate(
                    image_pb2.ImageGenerateRequest(prompt=secret_prompt, num_inference_steps=steps),
                    metadata=metadata,
                    timeout=60,
                )
            )
    with pytest.raises(grpc.RpcError):
        text(channel, (), prompt=secret_prompt)
    server.server.usage_log.flush()
    assert "zebra" not in caplog.text
    usage = server.server.usage_log.path
    with sqlite3.connect(usage) as db:
        dump = "\n".join(db.iterdump())
    assert "zebra" not in dump


# -- the keys file and its CLI ----------------------------------------------------------


def test_keys_create_prints_the_secret_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    argv = ["keys", "--keys-file", str(path), "create", "svc-a", "--modality", "text"]
    assert cli_main([*argv, "--budget", "text=1000"]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("gsk.svc-a.")
    stored = path.read_text()
    assert secret not in stored and "scrypt$" in stored
    (entry,) = load_keys(path).keys
    assert entry.modalities == ("text",) and entry.budget_per_minute == {"text": 1000.0}
    assert cli_main(argv) == 2  # the same id twice
    assert cli_main(["keys", "--keys-file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert "svc-a" in listed and "scrypt" not in listed and secret not in listed
    assert cli_main(["keys", "--keys-file", str(path), "revoke", "svc-a"]) == 0
    assert load_keys(path).keys == []


def test_the_keys_file_names_the_manifests_modalities() -> None:
    assert set(MODALITY_NAMES) == {m.value for m in Modality}


def test_the_debug_flag_is_what_puts_prompts_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="genserve.server.auth")
    server = ServerThread(make_settings(tmp_path, log_prompts=True), Manifest()).start(load=False)
    try:
        with pytest.raises(grpc.RpcError):  # no text model here: NOT_FOUND, after the log line
            text(server.channel(), (), prompt="zebra in the debug log")
    finally:
        server.stop()
    assert "zebra in the debug log" in caplog.text


def test_a_usage_log_from_before_keys_gains_the_key_id_column(tmp_path: Path) -> None:
    from genserve.server.usage_log import UsageLog

    path = tmp_path / "usage.sqlite3"
    with sqlite3.connect(path) as db:  # the columns of a log written before this change
        db.execute(
            "CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,"
            " datetime_utc TEXT NOT NULL, method TEXT NOT NULL, client_address TEXT NOT NULL,"
            " response_time_ms REAL NOT NULL, status_code TEXT NOT NULL,"
            " successful INTEGER NOT NULL, time_to_first_message_ms REAL,"
            " messages_out INTEGER NOT NULL, bytes_out INTEGER NOT NULL, prompt_tokens INTEGER,"
            " completion_tokens INTEGER, queued_ms REAL, inference_ms REAL, encoding_ms REAL,"
            " model TEXT)"
        )
    UsageLog(path).close()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
    assert "key_id" in columns
