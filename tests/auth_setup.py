"""A keys file made with the real `create_key`, and servers that require those keys."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from genserve.server.auth.keys import create_key
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.settings import AuthSettings
from tests.server_thread import ServerThread, make_settings

# A text budget one long-prompt request takes more than half of: of two such requests
# sent together, one is refused and told to wait a few seconds, not a minute. Sent
# together, not one after the other, so that refilling during the first one's
# generation (slow on a busy machine) cannot let the second through.
TEXT_BUDGET_PER_MINUTE = 600.0
BUDGET_PROMPT = "lorem ipsum " * 100  # 1200 characters: about 340 units with max_new_tokens=1

T = TypeVar("T")


def together(*calls: Callable[[], T]) -> list[T]:
    """Runs the calls at the same time, each in its own thread; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


@dataclass(frozen=True)
class Keys:
    path: Path
    ops: str  # may call anything
    writer: str  # text only
    budgeted: str  # everything; text capped at TEXT_BUDGET_PER_MINUTE
    patient: str  # the same cap, for the SDK's own waiting


def make_keys(directory: Path) -> Keys:
    path = directory / "keys.json"
    return Keys(
        path=path,
        ops=create_key(path, "ops"),
        writer=create_key(path, "writer", modalities=("text",)),
        budgeted=create_key(path, "budgeted", budget_per_minute={"text": TEXT_BUDGET_PER_MINUTE}),
        patient=create_key(path, "patient", budget_per_minute={"text": TEXT_BUDGET_PER_MINUTE}),
    )


def text_and_image() -> Manifest:
    tiny = load_manifest(manifest_path("tiny"))
    return Manifest(text=tiny.text[:1], image=tiny.image)


def auth_server(
    data_dir: Path,
    keys_file: Path,
    manifest: Manifest | None = None,
    load: bool = True,
    **overrides: Any,
) -> ServerThread:
    overrides.setdefault("auth", AuthSettings(watch_s=0))  # reloads are the test's to make
    settings = make_settings(data_dir, keys_file=keys_file, **overrides)
    server = ServerThread(settings, manifest or text_and_image())
    return server.start(load=load)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """Code, details and trailing metadata of a failed call."""
    return (
        error.code(),  # type: ignore[attr-defined]
        error.details() or "",  # type: ignore[attr-defined]
        dict(error.trailing_metadata() or ()),  # type: ignore[attr-defined]
    )
