"""`python -m genserve.server.model_store [--store DIR]`: build the tiny offline pipelines.

Each pipeline is built deterministically (fixed seed) and saved with save_pretrained.
A pipeline already in the store is skipped, so the make step is cheap after the first run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from genserve.server.model_store.bark import build_bark
from genserve.server.model_store.shap_e import build_shap_e
from genserve.server.model_store.stable_diffusion import build_stable_diffusion
from genserve.server.model_store.stable_video_diffusion import build_stable_video_diffusion

logger = logging.getLogger("server.model_store")

SEED = 0
COMPLETE_MARKER = ".complete"

BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "stable-diffusion": build_stable_diffusion,
    "stable-video-diffusion": build_stable_video_diffusion,
    "shap-e": build_shap_e,
    "bark": build_bark,
}


def build_store(store: Path) -> None:
    for name, build in BUILDERS.items():
        target = store / name
        if (target / COMPLETE_MARKER).exists():
            logger.info("%s: already built", name)
            continue
        shutil.rmtree(target, ignore_errors=True)  # a half-built folder from an interrupted run
        started = time.perf_counter()
        build(target, SEED)
        (target / COMPLETE_MARKER).touch()
        logger.info("%s: built in %.1f s", name, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_store(args.store)


if __name__ == "__main__":
    main()
