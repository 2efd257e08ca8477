"""The SDK's re-attach against a real crash: a `python -m genserve.server` process
SIGKILLed while a Job.watch() reads it, and started again on the same job store. The
watcher is left alone: it re-attaches by itself and ends with the re-run's whole file."""

from __future__ import annotations

import hashlib
import io
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

import av
import pytest

from genserve.client import GenServe
from genserve.client.job_cursor import Restarted
from genserve.client.job_info import JobState
from genserve.contract.events import Chunk, Final, Header, Progress
from tests.media_calls import png_bytes
from tests.test_jobs_restart import STEPS, jobs_stub, server_process
from tests.test_load_shutdown import free_port

pytestmark = pytest.mark.timeout(600)


def test_a_watch_and_a_download_outlive_a_server_kill(tmp_path: Path) -> None:
    port = free_port()
    with ExitStack() as servers, GenServe(f"127.0.0.1:{port}") as gs:
        first = servers.enter_context(server_process(tmp_path, port))
        with jobs_stub(port, first):  # waits for SERVING
            pass
        job = gs.submit("video", png_bytes(), num_inference_steps=STEPS)
        started = threading.Event()

        def restart() -> None:  # while the watcher backs off, as an operator would
            first.wait(30)
            servers.enter_context(server_process(tmp_path, port))
            started.set()

        events = []
        for event in job.watch():
            events.append(event)
            if isinstance(event, Progress) and event.step >= 2 and first.poll() is None:
                first.send_signal(signal.SIGKILL)
                threading.Thread(target=restart).start()
        assert started.is_set()
        info = job.refresh()
        assert info.state is JobState.SUCCEEDED and info.attempts == 2 and info.final is not None
        assert sum(isinstance(e, Header) for e in events) == 1  # not replayed to the caller
        assert not any(isinstance(e, Restarted) for e in events)  # no bytes before the kill
        data = b"".join(e.data for e in events if isinstance(e, Chunk))
        assert isinstance(events[-1], Final) and events[-1].sha256 == info.final.sha256
        assert hashlib.sha256(data).hexdigest() == info.final.sha256
        with av.open(io.BytesIO(data), mode="r") as container:
            assert list(container.decode(video=0))
        half = tmp_path / "half.mp4"
        half.write_bytes(data[: len(data) // 2])
        assert job.download(half).read_bytes() == data  # resumed from the half
