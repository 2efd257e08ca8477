"""Serving overhead per media modality at the tiny profile.

For each modality, in one process and one run: the bare pipeline call (the model alone,
no encoding) against the same request served end to end over gRPC (validation, queue,
model, encoding, chunking, transfer). Medians of repeats; overhead = served - bare.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import torch
from PIL import Image

from bench.timing import alternate
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.media.audio import BarkBundle
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    mesh_pb2,
    mesh_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from tests.server_thread import ServerThread, make_settings


def media_manifest() -> Manifest:
    manifest = load_manifest(manifest_path("tiny"))
    return manifest.model_copy(update={"text": (), "embedding": ()})


def drain(stream: Any) -> int:
    return sum(len(e.chunk.data) for e in stream if e.WhichOneof("event") == "chunk")


def _like_the_server(function: Callable[[], object]) -> Callable[[], object]:
    """Runs the bare call as the server runs a pipeline: on a dedicated thread, in
    inference mode, so the difference measured is the serving path alone."""
    thread = ThreadPoolExecutor(max_workers=1)

    def call() -> object:
        def in_inference_mode() -> object:
            with torch.inference_mode():
                return function()

        return thread.submit(in_inference_mode).result()

    return call


BARK = "tiny-bark"


def timed_pair(
    bare: Callable[[], object], served: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    return alternate(_like_the_server(bare), served, repeats)


def cases(
    server: ServerThread, channel: grpc.Channel
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    # The bare side loads its own copy of each pipeline, from the same store folder the
    # served model was loaded from (the tiny pipelines are small).
    settings = server.server.settings

    def source(modality: Modality, name: str | None = None) -> str:
        return server.server.registry.resolve(modality, name).spec.resolved_source(
            settings.model_store
        )

    from diffusers import ShapEPipeline, StableDiffusionPipeline, StableVideoDiffusionPipeline
    from transformers import BarkModel, BarkProcessor

    image_pipe = StableDiffusionPipeline.from_pretrained(
        source(Modality.IMAGE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    video_pipe = StableVideoDiffusionPipeline.from_pretrained(source(Modality.VIDEO))
    mesh_pipe = ShapEPipeline.from_pretrained(source(Modality.MESH))
    for pipe in (image_pipe, video_pipe, mesh_pipe):
        pipe.set_progress_bar_config(disable=True)
    bark = BarkBundle(
        # Bark by name: the tiny profile's default speech model is piper
        BarkProcessor.from_pretrained(source(Modality.AUDIO, BARK)),
        BarkModel.from_pretrained(source(Modality.AUDIO, BARK)).eval(),
    )
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 90, 40)).save(buffer, format="PNG")
    source_png = buffer.getvalue()
    source_image = Image.open(io.BytesIO(source_png)).convert("RGB")

    def gen(seed: int = 1) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    def bare_audio() -> object:
        inputs = bark.processor("Hello, FastAPI!", voice_preset="v2/en_speaker_1")
        torch.manual_seed(1)
        return bark.model.generate(**inputs, do_sample=True)

    return {
        "image (64x64, 10 steps, PNG)": (
            lambda: image_pipe(
                "a cozy living room", num_inference_steps=10, width=64, height=64, generator=gen()
            ),
            lambda: drain(
                image_pb2_grpc.ImageServiceStub(channel).Generate(
                    image_pb2.ImageGenerateRequest(prompt="a cozy living room", seed=1)
                )
            ),
        ),
        "audio (Bark, WAV)": (
            bare_audio,
            lambda: drain(
                audio_pb2_grpc.AudioServiceStub(channel).Generate(
                    audio_pb2.AudioGenerateRequest(prompt="Hello, FastAPI!", seed=1, model=BARK)
                )
            ),
        ),
        "video (25 frames 64x64, 4 steps, MP4)": (
            lambda: video_pipe(
                source_image,
                height=64,
                width=64,
                num_frames=25,
                num_inference_steps=4,
                decode_chunk_size=8,
                generator=gen(42),
                output_type="np",
            ),
            lambda: drain(
                video_pb2_grpc.VideoServiceStub(channel).Generate(
                    video_pb2.VideoGenerateRequest(image=source_png)
                )
            ),
        ),
        "mesh (25 steps, grid 32, OBJ)": (
            lambda: mesh_pipe.shap_e_renderer.decode_to_mesh(
                mesh_pipe(
                    "a chair",
                    guidance_scale=15.0,
                    num_inference_steps=25,
                    generator=gen(),
                    output_type="latent",
                ).images[0][None],
                mesh_pipe.device,
                grid_size=32,
            ),
            lambda: drain(
                mesh_pb2_grpc.MeshServiceStub(channel).Generate(
                    mesh_pb2.MeshGenerateRequest(prompt="a chair", seed=1)
                )
            ),
        ),
    }


def run(repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(make_settings(Path(data_dir)), media_manifest()).start()
        channel = server.channel()
        rows = []
        try:
            for name, (bare, served) in cases(server, channel).items():
                bare_times, served_times = timed_pair(bare, served, repeats)
                bare_ms = statistics.median(bare_times)
                served_ms = statistics.median(served_times)
                rows.append(
                    {
                        "modality": name,
                        "bare_ms": round(bare_ms, 1),
                        "served_ms": round(served_ms, 1),
                        "overhead_ms": round(served_ms - bare_ms, 1),
                        "served_over_bare": round(served_ms / bare_ms, 3),
                        "repeats": repeats,
                    }
                )
        finally:
            channel.close()
            server.stop()
    return rows


COLUMNS = ("modality", "bare_ms", "served_ms", "overhead_ms", "served_over_bare")


def markdown(rows: list[dict[str, Any]]) -> str:
    header = "| modality | bare pipeline ms | served over gRPC ms | overhead ms | served / bare |"
    lines = [header, "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/media_overhead.json"))
    args = parser.parse_args()
    rows = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
