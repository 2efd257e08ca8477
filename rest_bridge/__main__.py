"""`python -m genserve.bridge`: settings once, logging once, then uvicorn."""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn
from pydantic_settings import CliApp

from genserve.bridge.app import create_app
from genserve.bridge.settings import BridgeSettings
from genserve.server.auth.exposure import ExposureError, bind_host
from genserve.server.logging_setup import configure_logging

logger = logging.getLogger("rest_bridge")


def main(argv: list[str] | None = None) -> None:
    settings = CliApp.run(BridgeSettings, cli_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, "json" if settings.log_format == "json" else "text")
    try:
        host = bind_host(
            settings.host, settings.keys_file is not None, settings.insecure_no_auth, "bridge"
        )
    except ExposureError as error:
        logger.error("%s", error)
        sys.exit(2)
    scheme = "https" if settings.ssl_certfile is not None else "http"
    logger.info(
        "HTTP bridge on %s://%s:%d (docs at /docs), relaying to gRPC %s (%s)",
        scheme,
        host,
        settings.port,
        settings.grpc_target,
        "TLS" if settings.grpc_tls.on else "plaintext",
    )
    app = create_app(settings)
    auth = app.state.auth
    if auth is not None:  # uvicorn handles INT and TERM; HUP re-reads the keys file
        signal.signal(signal.SIGHUP, lambda *_: auth.store.reload())
    uvicorn.run(
        app,
        host=host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        log_config=None,  # keep our logging: request IDs on every line
        access_log=False,  # the bridge logs each request itself
    )


if __name__ == "__main__":
    main()
