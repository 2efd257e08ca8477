from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import torch

from genserve.bridge.settings import BridgeSettings
from genserve.server.logging_setup import configure_logging
from genserve.server.manifest import load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from tests.bridge_thread import BridgeThread
from tests.media_calls import TEST_CHUNK_SIZE
from tests.server_thread import ServerThread, make_settings


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("WARNING")  # tests that read logs raise the level with caplog


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The default (tiny) profile, models preloaded: shared by the suite to load them once."""
    data_dir: Path = tmp_path_factory.mktemp("var")
    # Small chunks so that even tiny media files stream as several chunks.
    settings = make_settings(data_dir, media=MediaLimits(chunk_size=TEST_CHUNK_SIZE))
    manifest = load_manifest(manifest_path("tiny"))
    server = ServerThread(settings, manifest).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def channel(tiny_server: ServerThread) -> Iterator[grpc.Channel]:
    channel = tiny_server.channel()
    yield channel
    channel.close()


BRIDGE_HTTP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def bridge(tiny_server: ServerThread) -> Iterator[BridgeThread]:
    """The bridge in front of the shared tiny server, one per test module."""
    thread = BridgeThread(BridgeSettings(grpc_target=f"localhost:{tiny_server.port}")).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(bridge: BridgeThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.url, timeout=BRIDGE_HTTP_TIMEOUT_S) as client:
        yield client
