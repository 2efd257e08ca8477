"""Who may call, over HTTP: the bridge checks the same keys (401 + WWW-Authenticate),
passes the caller's key on for the server to check again (403, 429 + Retry-After), slows
down guessing, reloads keys, stays open for health, and binds loopback by default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from genserve.bridge.settings import BridgeSettings
from genserve.server.auth.keys import create_key, revoke_key
from genserve.server.settings import AuthSettings
from genserve.v1 import models_pb2, models_pb2_grpc
from tests.auth_setup import BUDGET_PROMPT, Keys, auth_server, bearer, make_keys, together
from tests.bridge_thread import BridgeThread
from tests.server_thread import REPO_ROOT, ServerThread, wait_until

HTTP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerThread]:
    thread = auth_server(tmp_path_factory.mktemp("var"), keys.path)
    yield thread
    thread.stop()


def bridge_settings(server: ServerThread, keys: Keys, **overrides: object) -> BridgeSettings:
    values: dict[str, object] = {
        "grpc_target": f"localhost:{server.port}",
        "keys_file": keys.path,
        "api_key": keys.ops,  # the bridge's own calls: limits at start, /readyz
        "auth": AuthSettings(watch_s=0),
    }
    return BridgeSettings(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bridge(server: ServerThread, keys: Keys) -> Iterator[BridgeThread]:
    thread = BridgeThread(bridge_settings(server, keys)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(bridge: BridgeThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.url, timeout=HTTP_TIMEOUT_S) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def short_text(http: httpx.Client, headers: dict[str, str], **params: str | int) -> httpx.Response:
    query: dict[str, str | int] = {"prompt": "What is FastAPI?", "max_new_tokens": 2}
    query |= {"do_sample": "false"} | params
    return http.get("/generate/text", params=query, headers=headers)


def assert_refused(response: httpx.Response, status: int, code: str) -> str:
    """The bridge's error body, with the request ID of the X-Request-ID header."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return str(error["message"])


# -- refusals ---------------------------------------------------------------------------


def test_no_key_is_401_with_www_authenticate(http: httpx.Client, server: ServerThread) -> None:
    response = short_text(http, {})
    message = assert_refused(response, 401, "UNAUTHENTICATED")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["x-request-id"] in message
    assert http.get("/models").status_code == 401


def test_a_wrong_key_is_401_invalid_token(http: httpx.Client) -> None:
    response = short_text(http, {"Authorization": "Bearer definitely-wrong-key"})
    assert_refused(response, 401, "UNAUTHENTICATED")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_openai_routes_take_the_key_as_openai_sends_it(http: httpx.Client, keys: Keys) -> None:
    body: dict[str, object] = {"model": "smollm2-135m-instruct", "max_tokens": 2}
    body["messages"] = [{"role": "user", "content": "Hi"}]
    refused = http.post("/v1/chat/completions", json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    served = http.post("/v1/chat/completions", json=body, headers=auth(keys.ops))
    assert served.status_code == 200, served.text


def test_the_callers_key_reaches_the_server_and_its_usage_row(
    http: httpx.Client, server: ServerThread, keys: Keys
) -> None:
    response = short_text(http, auth(keys.writer) | {"X-Request-ID": "bridge-auth-ok"})
    assert response.status_code == 200 and response.text
    row = server.wait_for_usage_row("bridge-auth-ok")
    assert row["key_id"] == "writer" and row["status_code"] == "OK"


def test_a_text_only_key_is_403_for_image(
    http: httpx.Client, server: ServerThread, keys: Keys
) -> None:
    headers = auth(keys.writer) | {"X-Request-ID": "bridge-auth-403"}
    response = http.get("/generate/image", params={"prompt": "a red square"}, headers=headers)
    message = assert_refused(response, 403, "PERMISSION_DENIED")
    assert "writer" in message
    assert server.wait_for_usage_row("bridge-auth-403")["status_code"] == "PERMISSION_DENIED"
    image = {"prompt": "a red square", "model": "tiny-stable-diffusion"}
    assert (
        http.post("/v1/images/generations", json=image, headers=auth(keys.writer)).status_code
        == 403
    )
    assert (
        http.post("/models/tiny-stable-diffusion/unload", headers=auth(keys.writer)).status_code
        == 403
    )


def test_a_budget_is_429_with_retry_after_then_refilled(http: httpx.Client, keys: Keys) -> None:
    fields = {"prompt": BUDGET_PROMPT, "max_new_tokens": 1}

    def ask() -> httpx.Response:
        return http.post("/generate/text", json=fields, headers=auth(keys.budgeted))

    answers = together(ask, ask)
    assert sorted(a.status_code for a in answers) == [200, 429], "the budget covers one"
    (refused,) = [a for a in answers if a.status_code == 429]
    assert_refused(refused, 429, "RESOURCE_EXHAUSTED")
    wait_s = int(refused.headers["retry-after"])
    assert 1 <= wait_s <= 60
    time.sleep(wait_s)
    assert http.post("/generate/text", json=fields, headers=auth(keys.budgeted)).status_code == 200


def test_health_and_docs_are_open_metrics_are_not(http: httpx.Client, keys: Keys) -> None:
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")  # asks the server with the bridge's own key
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers=auth(keys.ops)).status_code == 200


# -- reload -----------------------------------------------------------------------------


def test_a_revoked_key_is_refused_after_a_reload(
    http: httpx.Client, bridge: BridgeThread, server: ServerThread, keys: Keys
) -> None:
    secret = create_key(keys.path, "bridge-temporary")
    store = bridge.app.state.auth.store

    async def reload_server() -> bool:
        return server.server.reload_keys()

    assert store.reload() and server.run(reload_server())
    assert short_text(http, auth(secret)).status_code == 200
    revoke_key(keys.path, "bridge-temporary")
    assert store.reload() and server.run(reload_server())
    assert_refused(short_text(http, auth(secret)), 401, "UNAUTHENTICATED")


def test_a_bridge_without_the_keys_file_still_gets_the_servers_401(
    server: ServerThread, keys: Keys
) -> None:
    settings = bridge_settings(server, keys, keys_file=None)
    thread = BridgeThread(settings).start()
    try:
        with httpx.Client(base_url=thread.url, timeout=HTTP_TIMEOUT_S) as client:
            response = short_text(client, {})
            assert_refused(response, 401, "UNAUTHENTICATED")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert short_text(client, auth(keys.ops)).status_code == 200
    finally:
        thread.stop()


# -- brute force ------------------------------------------------------------------------


def test_repeated_wrong_keys_are_refused_for_a_while(server: ServerThread, keys: Keys) -> None:
    settings = bridge_settings(
        server, keys, auth=AuthSettings(watch_s=0, max_failures=3, lockout_s=600)
    )
    thread = BridgeThread(settings).start()
    try:
        with httpx.Client(base_url=thread.url, timeout=HTTP_TIMEOUT_S) as client:
            assert client.get("/models", headers=auth(keys.ops)).status_code == 200
            for attempt in range(3):
                guess = auth(f"gsk.ops.guess{attempt}")
                assert client.get("/models", headers=guess).status_code == 401
            locked = client.get("/models", headers=auth(keys.ops))
            assert_refused(locked, 429, "RESOURCE_EXHAUSTED")
            assert int(locked.headers["retry-after"]) > 60
            assert client.get("/healthz").status_code == 200  # probes are not locked out
    finally:
        thread.stop()


# -- private by default, and the processes themselves ----------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_the_bridge_defaults_to_loopback_and_refuses_to_go_public_without_auth() -> None:
    assert BridgeSettings().host is None
    refused = run_module("genserve.bridge", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "--insecure-no-auth" in refused.stderr


def test_the_server_process_reloads_keys_on_sighup(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    secret = create_key(keys_file, "hup")
    manifest = tmp_path / "empty.toml"
    manifest.write_text("")
    port = free_port()
    command = [sys.executable, "-m", "genserve.server", "--port", str(port)]
    command += ["--metrics-port", str(free_port()), "--manifest", str(manifest)]
    command += ["--data-dir", str(tmp_path / "var"), "--keys-file", str(keys_file)]
    command += ["--auth.watch-s", "0", "--host", "127.0.0.1"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
            models = models_pb2_grpc.ModelServiceStub(channel)

            def status() -> grpc.StatusCode:
                try:
                    models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
                except grpc.RpcError as error:
                    return error.code()  # type: ignore[attr-defined,no-any-return]
                return grpc.StatusCode.OK

            assert status() == grpc.StatusCode.OK
            revoke_key(keys_file, "hup")
            assert status() == grpc.StatusCode.OK  # no watch: nothing changes by itself
            os.kill(process.pid, signal.SIGHUP)
            wait_until(lambda: status() == grpc.StatusCode.UNAUTHENTICATED or None, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert secret not in stderr
    assert "keys file" in stderr


def test_the_server_process_says_it_listens_on_loopback_only(tmp_path: Path) -> None:
    manifest = tmp_path / "empty.toml"
    manifest.write_text("")
    port = free_port()
    command = [sys.executable, "-m", "genserve.server", "--port", str(port)]
    command += ["--metrics-port", str(free_port()), "--manifest", str(manifest)]
    command += ["--data-dir", str(tmp_path / "var")]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert "loopback (127.0.0.1) only" in stderr
    refused = run_module("genserve.server", "--host", "0.0.0.0", "--manifest", str(manifest))
    assert refused.returncode == 2 and "--insecure-no-auth" in refused.stderr
