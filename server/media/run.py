"""One media request on the worker thread: progress, header, bounded chunks, final event.

A modality's generate function drives a MediaRun: it reports progress while the model
runs, marks when inference ends, sends the header, then writes the file into
`run.output`, which cuts it into chunks of at most `chunk_size` bytes as it is written
(a fragmented MP4 leaves while later frames are still being encoded). The run hashes
what it sends, so the final event's sha256 is the digest of exactly the chunks. With C2PA
signing on, the file is held and signed whole, then chunked (provenance/c2pa_sign.py).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from genserve.contract.events import Chunk, Final, Header, Progress
from genserve.server.engine.serial import Job
from genserve.server.provenance.c2pa_sign import SigningOutput, signing_output
from genserve.server.provenance.current import current_record


class ChunkedOutput(io.RawIOBase):
    """A write-only stream that emits Chunk events of at most chunk_size bytes."""

    def __init__(self, job: Job[Any], chunk_size: int) -> None:
        super().__init__()
        self._job = job
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self.bytes_sent = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        while len(self._buffer) >= self._chunk_size:
            self._send(bytes(self._buffer[: self._chunk_size]))
            del self._buffer[: self._chunk_size]
        return len(view)

    def write_all(self, data: bytes | memoryview) -> None:
        """Send an already encoded file, chunk by chunk, without copying it whole."""
        view = memoryview(data)
        for start in range(0, len(view), self._chunk_size):
            self.write(view[start : start + self._chunk_size])

    def flush_remainder(self) -> None:
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()

    def end(self) -> None:
        """The file is complete: what is left leaves."""
        self.flush_remainder()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def _send(self, data: bytes) -> None:
        self._job.check_cancelled()
        self._digest.update(data)
        self._job.emit(Chunk(data=data, offset=self.bytes_sent))
        self.bytes_sent += len(data)


class MediaRun:
    def __init__(self, job: Job[Any], chunk_size: int, seed: int) -> None:
        self.job = job
        self.seed = seed
        self.record = current_record()  # what the file says of how it was made (provenance)
        self.output: ChunkedOutput | SigningOutput = signing_output(
            ChunkedOutput(job, chunk_size), self.record
        )
        self._inference_done_at: float | None = None

    def header(self, header: Header) -> None:
        self.job.emit(header)

    def send_now(self, data: bytes) -> None:
        """Bytes that leave now as a chunk of their own (a file's head, before the model
        runs), whatever the chunk size."""
        if data:
            self.output.write(data)
            self.output.flush_remainder()

    def progress(self, step: int, total: int, stage: str) -> None:
        self.job.step_done()
        self.job.emit(Progress(step=step, total_steps=total, stage=stage))

    def inference_done(self) -> None:
        self.job.check_cancelled()
        self._inference_done_at = time.perf_counter()

    def finish(self, vertex_count: int = 0, face_count: int = 0) -> Final:
        self.output.end()
        now = time.perf_counter()
        inference_end = self._inference_done_at or now
        final = Final(
            total_bytes=self.output.bytes_sent,
            sha256=self.output.sha256,
            queued_ms=self.job.queued_ms,
            inference_ms=(inference_end - self.job.started) * 1000,
            encoding_ms=(now - inference_end) * 1000,
            seed=self.seed,
            vertex_count=vertex_count,
            face_count=face_count,
        )
        self.job.emit(final)
        return final


class _StepReporter:
    """Stands in for a diffusers progress bar: both its forms, `progress_bar(iterable)`
    and `with progress_bar(total=n) as bar: ... bar.update()`."""

    def __init__(
        self, run: MediaRun, stage: str, iterable: Iterable[Any] | None, total: int | None
    ):
        self._run = run
        self._stage = stage
        self._items = list(iterable) if iterable is not None else None
        self._total = total if total is not None else len(self._items or ())
        self._done = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self._items or ():
            self._run.job.check_cancelled()
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self._done += n
        self._run.progress(self._done, self._total, self._stage)
        self._run.job.check_cancelled()

    def __enter__(self) -> _StepReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


@contextmanager
def diffusers_progress(pipeline: Any, run: MediaRun, stage: str) -> Iterator[None]:
    """Routes a diffusers pipeline's step loop through a reporter: one progress event per
    denoising step, and cancellation between steps. Every diffusers pipeline drives its
    loop through self.progress_bar, so this works for all of them."""

    def progress_bar(iterable: Iterable[Any] | None = None, total: int | None = None) -> Any:
        return _StepReporter(run, stage, iterable, total)

    pipeline.progress_bar = progress_bar
    try:
        yield
    finally:
        del pipeline.progress_bar
