"""`python -m genserve.server`: build the settings once, configure logging, serve until a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from genserve.server.app import GenServeServer
from genserve.server.auth.exposure import ExposureError
from genserve.server.logging_setup import configure_logging
from genserve.server.manifest import load_manifest, manifest_path
from genserve.server.settings import Settings

logger = logging.getLogger("genserve.server")


async def serve(settings: Settings) -> bool:
    """Serve until SIGTERM or SIGINT; False when a model thread was left running."""
    started = time.perf_counter()
    manifest = load_manifest(manifest_path(settings.profile, settings.manifest))
    server = GenServeServer(settings, manifest)
    await server.start()

    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_keys)

    async def load_and_report() -> None:
        await server.load_models()
        logger.info(
            "SERVING %.1f s after start (profile %s)",
            time.perf_counter() - started,
            settings.profile,
        )

    loading = asyncio.create_task(load_and_report())
    await stop_requested.wait()
    if not loading.done():
        loading.cancel()
    return await server.stop()


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)  # type: ignore[call-arg]
    configure_logging(settings.log_level, settings.log_format)
    try:
        clean = asyncio.run(serve(settings))
    except ExposureError as error:  # would serve anyone, or half-configured TLS
        logger.error("%s", error)
        sys.exit(2)
    if not clean:
        logger.warning("exiting with a model thread still running")
    # Every usage row is written and closed by now. The interpreter's own teardown (grpc
    # core, torch) takes seconds here, and aborts outright if a model thread is still
    # inside torch: flush the logs and leave, so a stop takes the grace period, not more.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
