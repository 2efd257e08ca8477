"""`genserve`: the SDK from a shell. Media commands write a file and show a progress bar.

Exit codes: 0 done; 2 bad flags; 3 the server refused the input (INVALID_ARGUMENT);
4 the server or model is unavailable (or the queue is full); 5 deadline exceeded;
1 anything else. Errors go to stderr with their request ID.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genserve.client import defaults, keys
from genserve.client.errors import (
    DeadlineExceededError,
    GenServeError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from genserve.client.results import MediaResult
from genserve.client.results import Progress as StepProgress
from genserve.client.sync_client import GenServe

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_DEADLINE = 0, 1, 2, 3, 4, 5
EXIT_BY_ERROR: dict[type[GenServeError], int] = {
    InvalidArgumentError: EXIT_INVALID,
    UnavailableError: EXIT_UNAVAILABLE,
    ResourceExhaustedError: EXIT_UNAVAILABLE,
    DeadlineExceededError: EXIT_DEADLINE,
}

err = Console(stderr=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=defaults.DEFAULT_TARGET, help="server host:port")
    parser.add_argument("--tls", action="store_true", help="use TLS (system roots)")
    parser.add_argument(
        "--root-certificates", type=Path, help="PEM CA(s) that verify the server (implies --tls)"
    )
    parser.add_argument("--client-cert", type=Path, help="PEM client certificate, for mTLS")
    parser.add_argument("--client-key", type=Path, help="PEM private key of --client-cert")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GENSERVE_API_KEY"),
        help="sent as 'authorization: Bearer <key>' (default: $GENSERVE_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, help="seconds (default per modality)")
    parser.add_argument("--request-id", help="your own request ID, for joining logs")
    parser.add_argument("--json", action="store_true", help="print machine-readable metadata")
    parser.add_argument("--model", help="a model by name (see `models`); default: the modality's")
    commands = parser.add_subparsers(dest="command", required=True)

    text = commands.add_parser("text", help="chat; the answer streams to stdout")
    text.add_argument("prompt")
    text.add_argument("--max-new-tokens", type=int)
    text.add_argument("--temperature", type=float)
    text.add_argument("--top-k", type=int)
    text.add_argument("--top-p", type=float)
    text.add_argument("--greedy", action="store_true", help="no sampling")
    text.add_argument("--seed", type=int)
    text.add_argument("--stop", action="append", help="a stop sequence (repeatable)")
    text.add_argument("--system-prompt")

    image = commands.add_parser("image", help="text-to-image")
    image.add_argument("prompt")
    image.add_argument("-o", "--output", type=Path, default=Path("."))
    image.add_argument("--steps", type=int)
    image.add_argument("--guidance-scale", type=float)
    image.add_argument("--width", type=int)
    image.add_argument("--height", type=int)
    image.add_argument("--negative-prompt", default="")
    image.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    image.add_argument("--seed", type=int)

    audio = commands.add_parser("audio", help="text-to-speech (WAV)")
    audio.add_argument("prompt")
    audio.add_argument("-o", "--output", type=Path, default=Path("."))
    audio.add_argument("--preset", help="voice preset, e.g. v2/en_speaker_1")
    audio.add_argument("--seed", type=int)

    video = commands.add_parser("video", help="image-to-video (MP4)")
    video.add_argument("image", type=Path, help="a PNG, JPEG or WebP file")
    video.add_argument("-o", "--output", type=Path, default=Path("."))
    video.add_argument("--frames", type=int, dest="num_frames")
    video.add_argument("--fps", type=float)
    video.add_argument("--steps", type=int)
    video.add_argument("--seed", type=int)

    mesh = commands.add_parser("3d", help="text-to-3D (OBJ or PLY)")
    mesh.add_argument("prompt")
    mesh.add_argument("-o", "--output", type=Path, default=Path("."))
    mesh.add_argument("--steps", type=int)
    mesh.add_argument("--guidance-scale", type=float)
    mesh.add_argument("--format", choices=["obj", "ply"], default="obj")
    mesh.add_argument("--seed", type=int)

    embed = commands.add_parser("embed", help="sentence embeddings")
    embed.add_argument("texts", nargs="+")

    keys.add_keys_parser(commands)
    commands.add_parser("health", help="the server's and each modality's health")
    commands.add_parser("models", help="what the server has loaded")
    return parser


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _timeout(args: argparse.Namespace) -> dict[str, float]:
    return {"timeout": args.timeout} if args.timeout else {}


def _run_media(
    args: argparse.Namespace, call: Callable[..., MediaResult], *call_args: Any, **params: Any
) -> int:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json,
    ) as bar:
        task = bar.add_task(args.command, total=None)

        def on_progress(step: StepProgress) -> None:
            bar.update(task, completed=step.step, total=step.total_steps, description=step.stage)

        result = call(
            *call_args,
            on_progress=on_progress,
            request_id=args.request_id,
            **params,
            **_timeout(args),
        )
    path = result.save(args.output)
    metadata = {
        "path": str(path),
        "bytes": len(result.data),
        "sha256": result.sha256,
        "seed": result.seed,
        "request_id": result.request_id,
        "header": asdict(result.header),
        "timings": asdict(result.timings),
    }
    if args.json:
        print(json.dumps(metadata))
    else:
        err.print(f"saved {path} ({len(result.data)} bytes, seed {result.seed})")
    return EXIT_OK


def _run(args: argparse.Namespace, gs: GenServe) -> int:
    if args.command == "text":
        params = _given(
            args,
            *("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "system_prompt"),
            "model",
        )
        if args.greedy:
            params["do_sample"] = False
        if args.json:
            result = gs.text.generate(
                args.prompt, request_id=args.request_id, **params, **_timeout(args)
            )
            print(json.dumps(asdict(result)))
            return EXIT_OK
        for delta in gs.text.stream(
            args.prompt, request_id=args.request_id, **params, **_timeout(args)
        ):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return EXIT_OK
    if args.command == "image":
        params = _given(
            args,
            *("steps", "guidance_scale", "width", "height", "seed", "format", "negative_prompt"),
            "model",
        )
        return _run_media(args, gs.image.generate, args.prompt, **params)
    if args.command == "audio":
        params = _given(args, "preset", "seed", "model")
        return _run_media(args, gs.audio.generate, args.prompt, **params)
    if args.command == "video":
        if not args.image.is_file():
            err.print(f"error: {args.image} is not a file")
            return EXIT_USAGE
        params = _given(args, "num_frames", "fps", "steps", "seed", "model")
        return _run_media(args, gs.video.generate, args.image, **params)
    if args.command == "3d":
        params = _given(args, "steps", "guidance_scale", "format", "seed", "model")
        return _run_media(args, gs.mesh.generate, args.prompt, **params)
    if args.command == "embed":
        vectors = gs.embeddings.create(
            args.texts, model=args.model, request_id=args.request_id, **_timeout(args)
        )
        if args.json:
            print(json.dumps({"embeddings": vectors}))
        else:
            for text, vector in zip(args.texts, vectors, strict=True):
                print(f"{len(vector)} dims  {vector[:3]}...  {text[:60]}")
        return EXIT_OK
    if args.command == "health":
        services = {"server": ""} | {m: f"genserve.v1.{s}Service" for m, s in SERVICE_NAMES.items()}
        statuses = {name: gs.health(service) for name, service in services.items()}
        if args.json:
            print(json.dumps(statuses))
        else:
            for name, status in statuses.items():
                print(f"{name:10} {status}")
        return EXIT_OK if statuses["server"] == "SERVING" else EXIT_UNAVAILABLE
    models = gs.models()
    if args.json:
        print(json.dumps([asdict(m) for m in models]))
        return EXIT_OK
    table = Table("modality", "name", "state", "device", "dtype", "policy")
    for m in models:
        table.add_row(m.modality, m.name, m.state, m.device, m.dtype, m.load_policy)
    Console().print(table)
    return EXIT_OK


SERVICE_NAMES = {
    "text": "Text",
    "audio": "Audio",
    "image": "Image",
    "video": "Video",
    "mesh": "Mesh",
    "embedding": "Embedding",
}


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":  # the keys file, here: no server involved
        return keys.run(args)
    try:
        with GenServe(
            args.target,
            tls=args.tls,
            root_certificates=_read(args.root_certificates),
            api_key=args.api_key,
            certificate_chain=_read(args.client_cert),
            private_key=_read(args.client_key),
        ) as gs:
            return _run(args, gs)
    except GenServeError as error:
        err.print(
            f"[red]error:[/red] {error.code.name}: {error.message} (request_id={error.request_id})"
        )
        return EXIT_BY_ERROR.get(type(error), EXIT_ERROR)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
