"""Text-to-image requests batched: concurrent requests of one shape share the UNet.

Requests whose latents have the same size and the same guidance (`Denoiser.key`) are rows
of one UNet pass. A request arriving while a batch runs joins it at the next step
boundary, as the text engine's sequences do; each request keeps its own generator, its own
scheduler, its own progress events and its own cancel. A request of another shape waits
for the running batch to drain, and from the moment it waits no later request joins ahead
of it: arrival order decides, so neither shape starves the other.

Events: the header when a request starts, one Progress per denoising step the pipeline
would report, then the encoded file in bounded chunks and the Final. A request's channel
holds every progress event it will get, so a slow reader never stalls the batch while it
denoises; only its own encoded chunks wait for it.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import queue
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import torch

from genserve.contract.events import Header, MediaEvent, Progress
from genserve.contract.modalities.image import EXTENSIONS, MIME_TYPES, ImageParams
from genserve.server.engine.base import EngineBase
from genserve.server.engine.channel import Cancelled, EventChannel
from genserve.server.engine.serial import DEFAULT_BUFFER_EVENTS, Job
from genserve.server.errors import ResourceExhausted
from genserve.server.media.image import start_image_file
from genserve.server.media.image_denoise import BatchKey, Denoiser, Denoising
from genserve.server.media.run import MediaRun
from genserve.server.provenance.images import ImageFile

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 4
STAGE = "denoise"


@dataclass
class _ImageRequest:
    params: ImageParams
    job: Job[MediaEvent]
    context: contextvars.Context  # the caller's: the request's log lines carry its ID
    run: MediaRun | None = None
    file: ImageFile | None = None
    denoising: Denoising | None = None

    @property
    def channel(self) -> EventChannel[MediaEvent]:
        return self.job.channel


class BatchingImageEngine(EngineBase[_ImageRequest]):
    def __init__(
        self,
        name: str,
        denoiser: Denoiser,
        *,
        chunk_size: int,
        max_queue: int,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        memory_bytes: int = 0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        super().__init__(name, thread_name=f"image-{name}", memory_bytes=memory_bytes)
        self._denoiser = denoiser
        self._chunk_size = chunk_size
        self._max_queue = max_queue
        self._max_batch_size = max_batch_size
        # Owned by the model thread:
        self._backlog: collections.deque[_ImageRequest] = collections.deque()  # arrival order
        self._running: list[_ImageRequest] = []
        self._key: BatchKey | None = None  # the running batch's shape
        self._start_thread()

    async def generate(self, request: ImageParams) -> AsyncGenerator[MediaEvent, None]:
        # room for every progress event, the header and a few chunks
        channel: EventChannel[MediaEvent] = EventChannel(
            request.num_inference_steps + DEFAULT_BUFFER_EVENTS + 2
        )
        job: Job[MediaEvent] = Job(channel=channel, submitted=time.perf_counter())
        self._submit(
            _ImageRequest(request, job, contextvars.copy_context()), max_queued=self._max_queue
        )
        try:
            async for event in channel.receive():
                yield event
        finally:
            channel.cancel()  # at once: the request leaves its batch at the next step

    # -- the model thread ---------------------------------------------------------------------

    def _run_once(self) -> None:
        self._take_arrivals(block=not self._running and not self._backlog)
        if self._closed:
            return
        self._admit()
        if self._running:
            self._step()

    def _take_arrivals(self, *, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while item is not None:  # None: close() was called
                self._backlog.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _admit(self) -> None:
        """Starts waiting requests of the running shape, in arrival order, up to the batch
        size; stops at the first of another shape (it goes once this batch drains)."""
        while self._backlog and len(self._running) < self._max_batch_size:
            request = self._backlog[0]
            key = self._denoiser.key(request.params)
            if self._running and key != self._key:
                return
            self._backlog.popleft()
            if self._start(request):
                self._running.append(request)
                self._key = key

    def _start(self, request: _ImageRequest) -> bool:
        self._dequeued()
        if request.job.cancelled:  # its caller left while it waited
            self._finished(request)
            return False
        try:
            request.context.run(self._begin, request)
        except Cancelled:
            self._finished(request)
            return False
        except Exception as exc:  # handed to the caller, whose servicer logs and maps it
            self._finished(request, exc)
            return False
        return True

    def _begin(self, request: _ImageRequest) -> None:
        params = request.params
        request.job.started = time.perf_counter()
        request.run = MediaRun(request.job, self._chunk_size, params.seed)
        request.run.header(
            Header(
                mime_type=MIME_TYPES[params.format],
                file_name=f"image-{params.seed}.{EXTENSIONS[params.format]}",
                width=params.width,
                height=params.height,
            )
        )
        request.file = start_image_file(params, request.run)
        with torch.inference_mode():
            request.denoising = self._denoiser.start(params)

    def _step(self) -> None:
        """Drops the requests whose callers left, runs one UNet pass over the rest, reports
        each one's progress and delivers those whose denoising is done."""
        for request in [r for r in self._running if r.job.cancelled]:
            self._leave(request)
        if not self._running:
            return
        batch = [r.denoising for r in self._running if r.denoising is not None]
        try:
            with torch.inference_mode():
                self._denoiser.step(batch)
        except Exception as exc:  # every request of the pass gets it
            logger.exception("denoising step failed for %d requests", len(self._running))
            for request in list(self._running):
                self._leave(request, exc)
            return
        self._stepped()
        for request in list(self._running):
            assert request.denoising is not None and request.run is not None
            reported = request.denoising.progress_after_step()
            if reported is not None and not request.job.cancelled:
                # never blocks: the channel has room for every progress event
                request.channel.try_send(_progress(request, reported))
            if request.denoising.done:
                self._deliver(request)

    def _deliver(self, request: _ImageRequest) -> None:
        error: BaseException | None = None
        try:
            request.context.run(self._encode, request)
        except Cancelled:
            pass
        except Exception as exc:
            error = exc
        self._leave(request, error)

    def _encode(self, request: _ImageRequest) -> None:
        assert request.denoising is not None and request.run is not None
        run = request.run
        assert request.file is not None
        with torch.inference_mode():
            image = self._denoiser.decode(request.denoising)
        run.inference_done()
        run.output.write_all(request.file.rest(image))
        run.finish()

    def _leave(self, request: _ImageRequest, error: BaseException | None = None) -> None:
        self._running.remove(request)
        request.denoising = None  # its latents and embeddings go now, not with the batch
        if not self._running:
            self._key = None
        self._finished(request, error)

    def _interrupt(self) -> None:
        for request in list(self._running):
            request.channel.cancel()

    def _shutdown(self) -> None:
        for request in list(self._running):
            self._leave(request)
        while self._backlog:
            self._refuse(self._backlog.popleft())

    def _closing_error(self) -> ResourceExhausted:
        return ResourceExhausted(f"{self.name} was unloaded; retry later")


def _progress(request: _ImageRequest, step: int) -> MediaEvent:
    return Progress(step=step, total_steps=request.params.num_inference_steps, stage=STAGE)
