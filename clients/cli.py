"""`genserve`: the SDK from a shell.

One subcommand per modality (its name or any alias), with every field of its proto
request as a flag. Media commands write a file and show a
progress bar; text streams to stdout; transcripts print each segment as it comes; any
other text stream prints its pieces' text as it comes, joined by its spec's rule.

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
from rich.markup import escape
from rich.pretty import pretty_repr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from genserve.contract import SPECS, ModalitySpec

from . import cli_inspect, cli_jobs, defaults, keys
from .calls import Kind, kind_of
from .cli_flags import add_request_flags, given_fields
from .errors import (
    DeadlineExceededError,
    GenServeError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from .folds import joined_increments, piece_text
from .sync_client import GenServe

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_DEADLINE = 0, 1, 2, 3, 4, 5
EXIT_BY_ERROR: dict[type[GenServeError], int] = {
    InvalidArgumentError: EXIT_INVALID,
    UnavailableError: EXIT_UNAVAILABLE,
    ResourceExhaustedError: EXIT_UNAVAILABLE,
    DeadlineExceededError: EXIT_DEADLINE,
}
UNARY_ITEMS_SHOWN = 4  # a unary reply's long lists (vectors) are cut to this on a terminal

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
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--model", help="a model by name (see `models`); default: the modality's")
    commands = parser.add_subparsers(dest="command", required=True)
    for spec in SPECS:
        command = commands.add_parser(spec.name, aliases=spec.aliases, help=spec.description)
        add_request_flags(command, spec)
        if kind_of(spec) is Kind.MEDIA:
            command.add_argument(
                "-o", "--output", type=Path, default=Path("."), help="a file, or a folder"
            )
            cli_jobs.add_detach_flag(command)
        command.set_defaults(spec=spec)
    keys.add_keys_parser(commands)
    cli_jobs.add_jobs_parser(commands)
    cli_inspect.add_inspect_parser(commands)
    commands.add_parser("health", help="the server's and each modality's health")
    commands.add_parser("models", help="what the server has loaded")
    return parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=lambda o: o.hex() if isinstance(o, bytes) else str(o)))


def _run_media(args: argparse.Namespace, calls: Any, fields: dict[str, Any]) -> int:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json,
    ) as bar:
        task = bar.add_task(args.spec.name, total=None)

        def on_progress(step: Any) -> None:
            bar.update(task, completed=step.step, total=step.total_steps, description=step.stage)

        result = calls.with_options(on_progress=on_progress).generate(**fields)
    path = result.save(args.output)
    if args.json:
        metadata = {"path": str(path), "bytes": len(result.data)} | asdict(result)
        del metadata["data"]
        _print_json(metadata)
    else:
        err.print(f"saved {path} ({len(result.data)} bytes, seed {result.seed})")
    return EXIT_OK


def _run_text(args: argparse.Namespace, calls: Any, fields: dict[str, Any]) -> int:
    if args.json:
        _print_json(asdict(calls.generate(**fields)))
        return EXIT_OK
    for delta in calls.stream(**fields):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK


def _run_transcript(args: argparse.Namespace, calls: Any, fields: dict[str, Any]) -> int:
    if args.json:
        _print_json(asdict(calls.generate(**fields)))
        return EXIT_OK
    for segment in calls.stream(**fields):
        print(
            f"[{segment.start_s:7.2f} -> {segment.end_s:7.2f}] {segment.text.strip()}", flush=True
        )
    return EXIT_OK


def _run_pieces(args: argparse.Namespace, calls: Any, fields: dict[str, Any]) -> int:
    if args.json:
        _print_json(asdict(calls.generate(**fields)))
        return EXIT_OK
    texts = (piece_text(piece) for piece in calls.stream(**fields) if "text" in piece)
    for added in joined_increments(args.spec.join, texts):
        sys.stdout.write(added)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK


def _run_unary(args: argparse.Namespace, calls: Any, fields: dict[str, Any]) -> int:
    reply = calls.create(**fields)
    if args.json:
        _print_json(reply)
    else:
        print(pretty_repr(reply, max_length=UNARY_ITEMS_SHOWN))
    return EXIT_OK


RUNNERS: dict[Kind, Callable[[argparse.Namespace, Any, dict[str, Any]], int]] = {
    Kind.MEDIA: _run_media,
    Kind.TEXT: _run_text,
    Kind.TRANSCRIPT: _run_transcript,
    Kind.PIECES: _run_pieces,
    Kind.UNARY: _run_unary,
}


def _run_modality(args: argparse.Namespace, gs: GenServe) -> int:
    spec: ModalitySpec[Any, Any] = args.spec
    fields = given_fields(args, spec) | ({"model": args.model} if args.model else {})
    if getattr(args, "detach", False):
        return cli_jobs.run_detached(args, gs, fields)
    calls = gs.calls(spec).with_options(timeout=args.timeout, request_id=args.request_id)
    return RUNNERS[kind_of(spec)](args, calls, fields)


def _run_health(args: argparse.Namespace, gs: GenServe) -> int:
    services = {"server": ""} | {spec.name: spec.service for spec in SPECS}
    statuses = {name: gs.health(service) for name, service in services.items()}
    if args.json:
        _print_json(statuses)
    else:
        for name, status in statuses.items():
            print(f"{name:14} {status}")
    return EXIT_OK if statuses["server"] == "SERVING" else EXIT_UNAVAILABLE


def _run_models(args: argparse.Namespace, gs: GenServe) -> int:
    models = gs.models()
    if args.json:
        _print_json([asdict(m) for m in models])
        return EXIT_OK
    table = Table("modality", "state", "device", "dtype", "policy")
    # Names are what the other commands take (--model): never cut, the rest may wrap.
    widest = max((len(m.name) for m in models), default=4)
    table.columns.insert(1, Column("name", no_wrap=True, min_width=widest))
    for m in models:
        table.add_row(m.modality, m.name, m.state, m.device, m.dtype, m.load_policy)
    Console().print(table)
    return EXIT_OK


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":  # the keys file, here: no server involved
        return keys.run(args)
    if args.command == "inspect":  # a local file: no server involved
        return cli_inspect.run(args)
    commands = {"health": _run_health, "models": _run_models, "jobs": cli_jobs.run}
    run = commands.get(args.command, _run_modality)
    try:
        with GenServe(
            args.target,
            tls=args.tls,
            root_certificates=_read(args.root_certificates),
            api_key=args.api_key,
            certificate_chain=_read(args.client_cert),
            private_key=_read(args.client_key),
        ) as gs:
            return run(args, gs)
    except GenServeError as error:
        # The message is the server's: escaped, so that "[0]" in it is not rich markup.
        detail = escape(f"{error.code.name}: {error.message} (request_id={error.request_id})")
        err.print(f"[red]error:[/red] {detail}", highlight=False)
        return EXIT_BY_ERROR.get(type(error), EXIT_ERROR)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
