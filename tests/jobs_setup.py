"""A real server for the job tests: the tiny image model, a job store of its own under
the test's folder, small chunks so that even a tiny PNG spans several."""

from __future__ import annotations

from pathlib import Path

from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from tests.media_calls import TEST_CHUNK_SIZE
from tests.server_thread import ServerThread, make_settings


def start_jobs_server(root: Path) -> ServerThread:
    settings = make_settings(
        root, media=MediaLimits(chunk_size=TEST_CHUNK_SIZE), jobs={"store_dir": root / "jobs"}
    )
    manifest = Manifest(image=load_manifest(manifest_path("tiny")).image)
    return ServerThread(settings, manifest).start()
