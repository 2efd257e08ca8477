"""ProcessEngine: the server's side of a model whose engine runs in a worker process.

To the registry and the servicers it is an engine like the others. Each request is a
stream on the worker's socket: the worker sends at most `window_events` events ahead of
what this side has handed to its caller (credits), so a slow reader holds the worker's
stream, not this process's memory. Closing the iterator `generate` returns sends Cancel,
and the worker closes the engine's stream, which stops it at its next step.

A worker that dies (a signal, an abort, the OOM killer) ends its in-flight streams with
UNAVAILABLE, never a short OK; the model is not ready, and the engine starts a new worker
with backoff, then is ready again. A worker that fails while loading fails the load.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from genserve.contract import Modality
from genserve.server.engine.channel import EventChannel
from genserve.server.engine.contract import CLOSE_WAIT_S, EngineStats
from genserve.server.errors import Unavailable
from genserve.server.manifest import ModelSpec
from genserve.server.request_context import (
    current_request_id,
    current_request_time,
    seconds_left,
)
from genserve.server.settings import Settings
from genserve.server.worker.messages import (
    Cancel,
    Close,
    Credit,
    End,
    Event,
    Generate,
    LoadFailed,
    Ready,
    Start,
    Stats,
    Sync,
)
from genserve.server.worker.pipe import Pipe

logger = logging.getLogger(__name__)

EXIT_WAIT_S = 5.0  # for a dead worker's exit status, once its socket has closed
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class WorkerFailed(RuntimeError):
    """A worker that could not start, or a request it failed unexpectedly."""


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class _Worker:
    """One started worker process and the streams it serves."""

    process: subprocess.Popen[bytes]
    pipe: Pipe
    memory_bytes: int
    stats: EngineStats = field(default_factory=lambda: EngineStats(0, 0, 0))
    engine_ready: bool = True
    alive: bool = True
    streams: dict[int, EventChannel[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # alive and streams
    synced: threading.Condition = field(default_factory=threading.Condition)
    last_sync: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid


def _spawn(modality: Modality, spec: ModelSpec, settings: Settings) -> _Worker:
    """Starts a fresh interpreter (never a fork of this one) and waits for its model."""
    pipe, theirs = Pipe.pair()
    env = dict(os.environ)
    if spec.threads:  # read by the OpenMP and BLAS runtimes as they start
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(spec.threads)
    with theirs:
        process = subprocess.Popen(
            # The model's name on the command line: `ps` shows which worker runs what.
            [
                sys.executable,
                "-m",
                "genserve.server.worker",
                "--fd",
                str(theirs.fileno()),
                "--model",
                spec.name,
            ],
            pass_fds=(theirs.fileno(),),
            env=env,
            # Its own session: a Ctrl-C in the terminal reaches the server, which drains
            # its streams first and then closes the workers; not the workers directly.
            start_new_session=True,
        )
    try:
        pipe.send(Start(modality, spec, settings))
        if not pipe.poll(settings.worker.start_timeout_s):
            raise WorkerFailed(
                f"its worker did not load it within {settings.worker.start_timeout_s:.0f} s"
            )
        answer = pipe.recv()
    except (EOFError, OSError):
        answer = None
    except BaseException:
        _kill(process)
        pipe.close()
        raise
    if isinstance(answer, Ready):
        return _Worker(process, pipe, answer.memory_bytes)
    pipe.close()
    if isinstance(answer, LoadFailed):
        process.wait(EXIT_WAIT_S)
        raise WorkerFailed(answer.reason)
    try:
        returncode = process.wait(EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        returncode = process.returncode
    raise WorkerFailed(f"its worker process died while loading ({exit_reason(returncode)})")


def _wait_synced(worker: _Worker, token: int, timeout: float) -> None:
    """Until the worker has answered Sync(token), or died."""
    with worker.synced:
        worker.synced.wait_for(lambda: worker.last_sync >= token or not worker.alive, timeout)


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


class ProcessEngine:
    def __init__(self, modality: Modality, spec: ModelSpec, settings: Settings) -> None:
        self.name = spec.name
        self._modality = modality
        self._spec = spec
        self._settings = settings
        self._window = settings.worker.window_events
        self._credit_every = self._window // 2
        self._ids = itertools.count(1)
        self._closing = threading.Event()
        self._restarts = 0
        self.detail = ""  # why it is not ready, for ListModels
        self._worker: _Worker | None = None
        self._adopt(_spawn(modality, spec, settings))
        self.memory_bytes = self._current().memory_bytes

    # -- the contract ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        worker = self._worker
        if self._closing.is_set() or worker is None:
            return False
        return worker.alive and worker.engine_ready

    def stats(self) -> EngineStats:
        worker = self._worker
        return worker.stats if worker is not None else EngineStats(0, 0, 0)

    @property
    def pid(self) -> int | None:
        """The worker process serving now; None while it restarts."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def rss_bytes(self) -> int:
        """The worker's resident memory, read from /proc."""
        pid = self.pid
        if pid is None:
            return 0
        try:
            with open(f"/proc/{pid}/statm") as statm:
                return int(statm.read().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            return 0

    def wait_idle(self, timeout: float) -> bool:
        """Asks the worker for fresh stats until they say idle: the periodic ones may
        predate a cancel that the worker is still acting on."""
        deadline = time.monotonic() + timeout
        while True:
            worker = self._worker
            if worker is None or not worker.alive:
                return True
            token = next(self._ids)
            if not worker.pipe.send_quietly(Sync(token)):
                return True
            _wait_synced(worker, token, max(0.0, deadline - time.monotonic()))
            stats = worker.stats
            if not worker.streams and not (stats.queued or stats.in_flight):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    async def generate(self, request: Any) -> AsyncGenerator[Any, None]:
        worker = self._current()
        stream = next(self._ids)
        channel: EventChannel[Any] = EventChannel(self._window)
        with worker.lock:
            if not worker.alive:
                raise self._not_ready()
            worker.streams[stream] = channel
        finished = False
        try:
            try:
                worker.pipe.send(
                    Generate(
                        stream,
                        request,
                        seconds_left(),
                        current_request_id(),
                        current_request_time(),
                    )
                )
            except (OSError, ValueError):
                raise self._not_ready() from None
            handed = 0
            async for event in channel.receive():
                handed += 1
                if handed == self._credit_every:
                    worker.pipe.send_quietly(Credit(stream, handed))
                    handed = 0
                yield event
            finished = True
        finally:
            with worker.lock:
                worker.streams.pop(stream, None)
            if not finished and worker.alive:
                worker.pipe.send_quietly(Cancel(stream))

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Tells the worker to stop its work and exit; after `wait_s`, kills it. True
        once the process has ended."""
        worker = self._worker
        if not self._closing.is_set():
            self._closing.set()
            if worker is not None:
                worker.pipe.send_quietly(Close(wait_s))
        if worker is None:
            return True
        try:
            worker.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            if wait_s > 0:
                logger.warning("worker of %s did not exit in %.1f s; killing it", self.name, wait_s)
            else:
                return False  # told; a later close(wait_s) waits
            _kill(worker.process)
        worker.pipe.close()
        return True

    # -- workers -----------------------------------------------------------------------------

    def _current(self) -> _Worker:
        worker = self._worker
        if worker is None or not worker.alive or self._closing.is_set():
            raise self._not_ready()
        return worker

    def _not_ready(self) -> Unavailable:
        if self._closing.is_set():
            return Unavailable(f"model {self.name} is stopping; retry on another replica")
        return Unavailable(f"model {self.name}: {self.detail or 'its worker is restarting'}")

    def _adopt(self, worker: _Worker) -> None:
        self._worker = worker
        self.detail = ""
        threading.Thread(
            target=self._read, args=(worker,), name=f"worker-{self.name}", daemon=True
        ).start()

    def _read(self, worker: _Worker) -> None:
        """The worker's messages to its streams, until its socket closes."""
        while True:
            try:
                message = worker.pipe.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, Event):
                channel = worker.streams.get(message.stream)
                if channel is not None:
                    channel.try_send(message.event)  # never full: the worker has credits
            elif isinstance(message, End):
                channel = worker.streams.get(message.stream)
                if channel is not None:
                    channel.close(self._error_of(message))
            elif isinstance(message, Stats):
                worker.stats, worker.engine_ready = message.stats, message.ready
                if message.sync:
                    with worker.synced:
                        worker.last_sync = message.sync
                        worker.synced.notify_all()
        self._lost(worker)

    def _error_of(self, end: End) -> BaseException | None:
        if end.error is not None:
            return end.error.to_local()
        if end.failure is not None:
            return WorkerFailed(f"model {self.name}: the worker failed a request ({end.failure})")
        return None

    def _lost(self, worker: _Worker) -> None:
        try:
            returncode = worker.process.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:  # it closed its socket but lives on: end it
            _kill(worker.process)
            returncode = worker.process.returncode
        with worker.lock:
            worker.alive = False
            orphans = list(worker.streams.values())
        with worker.synced:
            worker.synced.notify_all()
        worker.pipe.close()
        if self._closing.is_set():
            for channel in orphans:
                channel.close(Unavailable(f"model {self.name} was stopped mid-stream; retry"))
            return
        reason = exit_reason(returncode)
        logger.error(
            "worker of %s (pid %d) died: %s; %d streams cut",
            self.name,
            worker.pid,
            reason,
            len(orphans),
        )
        for channel in orphans:
            channel.close(
                Unavailable(
                    f"model {self.name}: its worker process died ({reason}) mid-stream; "
                    "the output is incomplete; retry"
                )
            )
        self._restart(reason)

    def _restart(self, reason: str) -> None:
        """New workers with doubling waits until one loads, or the engine is closed."""
        backoff = self._settings.worker.restart_backoff_s
        while True:
            self.detail = f"its worker died ({reason}); restarting in {backoff:.1f} s"
            if self._closing.wait(backoff):
                return
            self._restarts += 1
            try:
                worker = _spawn(self._modality, self._spec, self._settings)
            except Exception as error:
                reason = f"the restart failed: {error}"
                logger.error("restarting the worker of %s failed: %s", self.name, error)
                backoff = min(backoff * 2, self._settings.worker.max_backoff_s)
                continue
            if self._closing.is_set():
                worker.pipe.send_quietly(Close(0))
                return
            logger.info("worker of %s restarted (pid %d)", self.name, worker.pid)
            self._adopt(worker)
            return
