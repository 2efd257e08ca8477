"""`python -m genserve.bridge`: settings once, logging once, then uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from genserve.bridge.app import create_app
from genserve.bridge.settings import BridgeSettings
from genserve.server.logging_setup import configure_logging

logger = logging.getLogger("rest_bridge")


def main(argv: list[str] | None = None) -> None:
    settings = BridgeSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)  # type: ignore[call-arg]
    configure_logging(settings.log_level, "json" if settings.log_format == "json" else "text")
    logger.info(
        "HTTP bridge on http://%s:%d (docs at /docs), relaying to gRPC %s",
        settings.host,
        settings.port,
        settings.grpc_target,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our logging: request IDs on every line
        access_log=False,  # the bridge logs each request itself
    )


if __name__ == "__main__":
    main()
