"""Batched diffusion: 4 concurrent tiny-SD requests (64x64, 10 steps) in the batching
engine, against the same 4 run one after another in it, side by side in one run.

Both sides use the same engine, so the ratio is what sharing the UNet buys, not a
difference between code paths; the bytes of every batched picture are compared with the
same seed's sequential one.

python -m bench.image_batching [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genserve.contract.events import Chunk
from genserve.contract.modalities.image import ImageParams
from genserve.server.manifest import Modality, load_manifest, manifest_path
from genserve.server.media.loaders import load_batching_image_engine
from genserve.server.settings import Settings

REQUESTS, STEPS, SIDE = 4, 10, 64
MODEL_STORE = Path(__file__).resolve().parent.parent / "var" / "models"


def _params(seed: int) -> ImageParams:
    return ImageParams(
        prompt=f"a red cube, take {seed}",
        seed=seed,
        width=SIDE,
        height=SIDE,
        num_inference_steps=STEPS,
    )


async def _picture(engine: Any, params: ImageParams) -> bytes:
    data = bytearray()
    async for event in engine.generate(params):
        if isinstance(event, Chunk):
            data += event.data
    return bytes(data)


async def _sequential(engine: Any, seeds: list[int]) -> list[bytes]:
    return [await _picture(engine, _params(s)) for s in seeds]


async def _concurrent(engine: Any, seeds: list[int]) -> list[bytes]:
    return list(await asyncio.gather(*(_picture(engine, _params(s)) for s in seeds)))


def _largest_difference(pictures: list[bytes], others: list[bytes]) -> int:
    def pixels(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    return max(
        int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(pictures, others, strict=True)
    )


def run(rounds: int = 3) -> dict[str, Any]:
    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.IMAGE)
    assert spec is not None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), model_store=MODEL_STORE, port=0)
        engine = load_batching_image_engine(spec, settings)
        try:
            seeds = list(range(1, REQUESTS + 1))
            asyncio.run(_sequential(engine, seeds[:1]))  # warm-up
            sequential_s, concurrent_s, equal, difference = [], [], True, 0
            for _ in range(rounds):  # alternated: both sides see the same machine
                started = time.perf_counter()
                alone = asyncio.run(_sequential(engine, seeds))
                sequential_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                together = asyncio.run(_concurrent(engine, seeds))
                concurrent_s.append(time.perf_counter() - started)
                equal = equal and alone == together
                difference = max(difference, _largest_difference(alone, together))
        finally:
            engine.close()
    sequential, concurrent = statistics.median(sequential_s), statistics.median(concurrent_s)
    return {
        "requests": REQUESTS,
        "steps": STEPS,
        "side": SIDE,
        "rounds": rounds,
        "sequential_s_median": round(sequential, 3),
        "concurrent_s_median": round(concurrent, 3),
        "throughput_ratio": round(sequential / concurrent, 2),
        "bytes_equal_solo": equal,
        "max_pixel_difference": difference,  # of 255, over every picture and round
    }


def markdown(result: dict[str, Any]) -> str:
    same = (
        "identical"
        if result["bytes_equal_solo"]
        else (f"at most {result['max_pixel_difference']}/255 apart")
    )
    return (
        f"Batched diffusion: {result['requests']} concurrent tiny-SD requests "
        f"({result['side']}x{result['side']}, {result['steps']} steps) took "
        f"{result['concurrent_s_median']} s against {result['sequential_s_median']} s one "
        f"after another: **{result['throughput_ratio']}x** the throughput (median of "
        f"{result['rounds']} rounds); the pictures are {same} from the sequential ones."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    print(json.dumps(run(parser.parse_args().rounds), indent=2))


if __name__ == "__main__":
    main()
