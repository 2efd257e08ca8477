"""The default `make run` profile against the text model alone: does serving every
modality in one server slow text down? Three server processes side by side:

- `alone`: the tiny profile's text model, nothing else;
- `profile`: the whole tiny profile, a worker process per model (placement `process`);
- `profile_local`: the whole tiny profile with every model in the server's process (how
  genserve ran before worker processes: torch's and llama.cpp's OpenMP runtimes share it).

Each profile server first serves one image and one audio request (so torch has run), then
the three take turns at single text streams; tokens/s medians and their ratios.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import grpc

from bench.server_process import served_manifest
from genserve.server.manifest import Modality, load_manifest, manifest_path
from genserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
)

PROMPT = "Explain what FastAPI is and why people use it."


def _profile(placement: str | None, text_only: bool = False) -> dict[str, Any]:
    manifest = load_manifest(manifest_path("tiny"))
    tables: dict[str, Any] = {}
    for modality in Modality:
        specs = manifest.specs(modality)
        if text_only:
            specs = specs[:1] if modality is Modality.TEXT else ()
        entries = []
        for spec in specs:
            if placement is not None and spec.upstream is None:
                spec = spec.model_copy(update={"placement": placement})
            entries.append(spec.model_dump(mode="json", exclude_none=True))
        if entries:
            tables[str(modality)] = entries
    return tables


def _media_first(channel: grpc.Channel) -> None:
    image = image_pb2_grpc.ImageServiceStub(channel)
    for _ in image.Generate(image_pb2.ImageGenerateRequest(prompt="a cube"), timeout=300):
        pass
    audio = audio_pb2_grpc.AudioServiceStub(channel)
    for _ in audio.Generate(audio_pb2.AudioGenerateRequest(prompt="hello"), timeout=300):
        pass


def _tokens_per_s(stub: Any, tokens: int) -> float:
    request = text_pb2.TextGenerateRequest(
        prompt=PROMPT, max_new_tokens=tokens, do_sample=False, seed=1
    )
    started = time.perf_counter()
    generated = 0
    for response in stub.Generate(request, timeout=300):
        if response.HasField("final"):
            generated = response.final.usage.completion_tokens
    return generated / (time.perf_counter() - started)


def run(rounds: int = 8, tokens: int = 128) -> dict[str, Any]:
    servers = {
        "alone": _profile(None, text_only=True),
        "profile": _profile("process"),
        "profile_local": _profile("local"),
    }
    with contextlib.ExitStack() as stack:
        stubs = {}
        for name, manifest in servers.items():
            target = stack.enter_context(served_manifest(manifest))
            channel = stack.enter_context(grpc.insecure_channel(target))
            if name != "alone":
                _media_first(channel)
            stubs[name] = text_pb2_grpc.TextServiceStub(channel)
        rates: dict[str, list[float]] = {name: [] for name in stubs}
        for stub in stubs.values():
            _tokens_per_s(stub, tokens)  # warm-up
        for _ in range(rounds):
            for name, stub in stubs.items():
                rates[name].append(_tokens_per_s(stub, tokens))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "rounds": rounds,
        "tokens": tokens,
        **{f"tokens_per_s_{name}": round(value, 1) for name, value in medians.items()},
        "profile_vs_alone": round(medians["profile"] / medians["alone"], 3),
        "profile_local_vs_alone": round(medians["profile_local"] / medians["alone"], 3),
    }


def markdown(result: dict[str, Any]) -> str:
    return (
        f"The default profile (every tiny model loaded, one image and one audio request served "
        f"first) against the text model alone, one {result['tokens']}-token stream at a time, "
        f"median of {result['rounds']}: {result['tokens_per_s_alone']} tokens/s alone, "
        f"{result['tokens_per_s_profile']} with the profile in worker processes "
        f"(**{result['profile_vs_alone']}x**, target at least 0.95x), "
        f"{result['tokens_per_s_profile_local']} with every model in the server's process "
        f"({result['profile_local_vs_alone']}x)."
    )


if __name__ == "__main__":
    print(run())
