"""The worker process: loads one model's engine and serves its streams to the server.

Started by the server as `python -m genserve.server.worker --fd N` (a fresh interpreter,
never a fork of the server: torch's and llama.cpp's OpenMP runtimes and the server's
threads stay out of it). The socket carries messages.py's values; the engine is the same
one an in-process model would have, driven by this process's own event loop.

The worker ends when the server says Close, or when its socket reaches EOF: the server
has gone, even by SIGKILL, so no worker outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

from genserve.server.engine.contract import Engine
from genserve.server.errors import ServingError
from genserve.server.logging_setup import configure_logging
from genserve.server.ray_serve.wire import ReplicaError
from genserve.server.request_context import request_id_var, request_time_var
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

_GONE = object()  # the server's end of the socket closed


def _load(start: Start) -> Engine[Any, Any]:
    from genserve.server.modalities import loader_for

    load = loader_for(start.modality, start.spec)
    if load is None:
        raise ValueError(f"no {start.spec.engine or 'default'} engine for {start.modality}")
    if start.spec.threads:
        import torch

        torch.set_num_threads(start.spec.threads)
    return load(start.spec, start.settings)


class WorkerLoop:
    """Runs the engine's streams; one task per stream, each paced by the server's credits."""

    def __init__(self, pipe: Pipe, engine: Engine[Any, Any], start: Start) -> None:
        self._pipe = pipe
        self._engine = engine
        self._window = start.settings.worker.window_events
        self._stats_interval_s = start.settings.worker.stats_interval_s
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._credits: dict[int, asyncio.Semaphore] = {}

    async def run(self) -> float:
        """Serves until Close (returns its wait) or the server's EOF (returns 0)."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(
            target=self._read, args=(loop, inbox), name="worker-inbox", daemon=True
        ).start()
        reporter = asyncio.create_task(self._report_stats())
        try:
            while True:
                message = await inbox.get()
                if message is _GONE:
                    return 0.0
                if isinstance(message, Close):
                    return message.wait_s
                self._dispatch(message)
        finally:
            reporter.cancel()
            for task in self._streams.values():
                task.cancel()

    def _read(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]) -> None:
        while True:
            try:
                message = self._pipe.recv()
            except (EOFError, OSError):
                message = _GONE
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message is _GONE:
                return

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Generate):
            self._credits[message.stream] = asyncio.Semaphore(self._window)
            self._streams[message.stream] = asyncio.create_task(self._serve(message))
        elif isinstance(message, Credit):
            credits = self._credits.get(message.stream)
            if credits is not None:
                for _ in range(message.events):
                    credits.release()
        elif isinstance(message, Sync):
            stats = Stats(self._engine.stats(), self._engine.ready, sync=message.token)
            self._pipe.send_quietly(stats)
        elif isinstance(message, Cancel):
            task = self._streams.get(message.stream)
            if task is not None:
                task.cancel()  # closes the engine's stream: it stops at its next step

    async def _serve(self, message: Generate) -> None:
        stream = message.stream
        request_id_var.set(message.request_id)
        request_time_var.set(message.request_time)
        credits = self._credits[stream]
        end = End(stream)
        try:
            async with asyncio.timeout(message.seconds_left):
                # Every engine's generate is an async generator (the contract says iterator).
                stream_of = cast(AsyncGenerator[Any, None], self._engine.generate(message.request))
                async with aclosing(stream_of) as events:
                    async for event in events:
                        await credits.acquire()
                        self._pipe.send(Event(stream, event))
        except asyncio.CancelledError:
            return  # the server's caller left: it expects nothing more
        except ServingError as error:
            end = End(stream, error=ReplicaError.of(error))
        except TimeoutError:
            limit = f"{message.seconds_left:.1f} s" if message.seconds_left else "its deadline"
            end = End(stream, error=ReplicaError("DEADLINE_EXCEEDED", f"ran past {limit}", None))
        except Exception as error:  # the traceback stays here, in the worker's log
            logger.exception("model %s failed a request", self._engine.name)
            end = End(stream, failure=type(error).__name__)
        finally:
            self._streams.pop(stream, None)
            self._credits.pop(stream, None)
        self._pipe.send_quietly(end)

    async def _report_stats(self) -> None:
        last: Stats | None = None
        while True:
            current = Stats(self._engine.stats(), self._engine.ready)
            if current != last:
                self._pipe.send_quietly(current)
                last = current
            await asyncio.sleep(self._stats_interval_s)


async def _serve(pipe: Pipe, start: Start) -> None:
    try:
        engine = await asyncio.to_thread(_load, start)
    except BaseException as error:
        logger.exception("worker for %s could not load it", start.spec.name)
        pipe.send_quietly(LoadFailed(f"{type(error).__name__}: {error}"))
        return
    pipe.send(Ready(memory_bytes=engine.memory_bytes, pid=os.getpid()))
    logger.info("worker for %s ready (pid %d)", start.spec.name, os.getpid())
    wait_s = await WorkerLoop(pipe, engine, start).run()
    await asyncio.to_thread(engine.close, wait_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genserve.server.worker")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the server")
    parser.add_argument("--model", required=True, help="the model's name (for ps)")
    args = parser.parse_args(argv)
    pipe = Pipe(args.fd)
    start: Start = pipe.recv()
    configure_logging(start.settings.log_level, start.settings.log_format)
    try:
        asyncio.run(_serve(pipe, start))
    finally:
        logging.shutdown()
        # Not the interpreter's teardown: a model thread still inside native code when
        # it runs can abort the process; the engine has been closed already.
        os._exit(0)
