"""`genserve jobs ...` and `--detach`: long media as jobs from a shell.

    genserve video room.png --num-frames 14 --detach     # prints the job's id
    genserve jobs watch ID                               # a progress bar, to the end
    genserve jobs download ID -o room.mp4                # resumes a partial room.mp4
    genserve jobs list [--state running] | get ID | cancel ID | delete ID

watch and download re-attach by themselves when the connection or the server drops
(the SDK's cursor), and start the file again if the job was re-run with other bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from genserve.contract.events import Chunk, Final
from genserve.contract.events import Progress as Step

from .errors import IntegrityError
from .job_cursor import Restarted
from .job_info import JobInfo, JobState
from .jobs import READ_BLOCK
from .sync_client import GenServe

EXIT_OK = 0
LIST_LIMIT = 50  # jobs listed unless --limit says otherwise
err = Console(stderr=True)


def add_detach_flag(command: argparse.ArgumentParser) -> None:
    """On a media command: submit it as a job instead of waiting for the file."""
    command.add_argument(
        "--detach", action="store_true", help="submit as a job, print its id (see `jobs`)"
    )


def add_jobs_parser(commands: Any) -> None:
    jobs = commands.add_parser("jobs", help="media jobs: list, get, watch, download, cancel")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = actions.add_parser("list", help="your jobs, newest first")
    states = [s.value for s in JobState if s is not JobState.UNSPECIFIED]
    listing.add_argument("--state", choices=states, help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=LIST_LIMIT, help="at most this many")
    for name, text in (("get", "one job"), ("cancel", "stop it"), ("delete", "remove it")):
        actions.add_parser(name, help=text).add_argument("id")
    watch = actions.add_parser("watch", help="its progress, live, until it ends")
    watch.add_argument("id")
    watch.add_argument("-o", "--output", type=Path, help="also write the file (resumed)")
    download = actions.add_parser("download", help="its file (resumed when partial)")
    download.add_argument("id")
    download.add_argument("-o", "--output", type=Path, required=True, help="a file, or a folder")
    download.add_argument("--no-resume", dest="resume", action="store_false")


def run_detached(args: argparse.Namespace, gs: GenServe, fields: dict[str, Any]) -> int:
    job = gs.submit(args.spec, **fields)
    if args.json:
        _print_json(_info_fields(job.info))
    else:
        print(job.id)
        err.print(f"submitted job {job.id} ({job.info.state.value}): genserve jobs watch {job.id}")
    return EXIT_OK


def run(args: argparse.Namespace, gs: GenServe) -> int:
    return RUNNERS[args.jobs_command](args, gs)


# -- the subcommands ---------------------------------------------------------------------


def _list(args: argparse.Namespace, gs: GenServe) -> int:
    infos = [job.info for job, _ in zip(gs.jobs(state=args.state), range(args.limit), strict=False)]
    if args.json:
        _print_json([_info_fields(info) for info in infos])
        return EXIT_OK
    # Ids and states never cut (ids are what the other commands take); the rest may wrap.
    widest = max((len(info.id) for info in infos), default=2)
    table = Table(
        Column("id", no_wrap=True, min_width=widest),
        Column("state", no_wrap=True),
        "modality",
        "progress",
        "bytes",
        "model",
        "created",
    )
    for info in infos:
        table.add_row(
            info.id,
            info.state.value,
            info.modality,
            _steps(info),
            str(info.bytes_written),
            info.model,
            datetime.fromtimestamp(info.created_at).isoformat(" ", "seconds"),
        )
    Console().print(table)
    return EXIT_OK


def _get(args: argparse.Namespace, gs: GenServe) -> int:
    fields = _info_fields(gs.job(args.id).info)
    if args.json:
        _print_json(fields)
    else:
        for name, value in fields.items():
            if value not in (None, "", 0, 0.0):
                print(f"{name:16} {value}")
    return EXIT_OK


def _cancel(args: argparse.Namespace, gs: GenServe) -> int:
    info = gs.job(args.id).cancel()
    if args.json:
        _print_json(_info_fields(info))
    else:
        print(f"{info.id} {info.state.value}")
    return EXIT_OK


def _delete(args: argparse.Namespace, gs: GenServe) -> int:
    deleted = gs.job(args.id).delete()
    if args.json:
        _print_json({"id": args.id, "deleted": deleted})
    else:
        print(f"{args.id} deleted")
    return EXIT_OK


def _watch(args: argparse.Namespace, gs: GenServe) -> int:
    job = gs.job(args.id)
    output: Path | None = args.output
    offset = output.stat().st_size if output is not None and output.is_file() else 0
    final: Final | None = None
    with _bar(args, job.id, None) as update, _appending(output) as write:
        for event in job.watch(from_offset=offset):
            if isinstance(event, Step):
                update(event.step, event.total_steps, event.stage)
            elif isinstance(event, Chunk):
                write(event.data, event.offset)
            elif isinstance(event, Restarted):
                write(b"", 0)  # the job re-ran with other bytes: the file starts again
            elif isinstance(event, Final):
                final = event
    if output is not None and final is not None:
        _check_file(output, final)
    return _report(args, job.refresh(), output)


def _download(args: argparse.Namespace, gs: GenServe) -> int:
    job = gs.job(args.id)
    total = job.info.final.total_bytes if job.info.final is not None else None
    with _bar(args, job.id, total, bytes_=True) as update:
        path = job.download(args.output, resume=args.resume, on_bytes=lambda n: update(n))
    return _report(args, job.info, path)


RUNNERS: dict[str, Callable[[argparse.Namespace, GenServe], int]] = {
    "list": _list,
    "get": _get,
    "cancel": _cancel,
    "delete": _delete,
    "watch": _watch,
    "download": _download,
}


# -- helpers -----------------------------------------------------------------------------

Update = Callable[..., None]


@contextmanager
def _bar(
    args: argparse.Namespace, job_id: str, total: int | None, bytes_: bool = False
) -> Iterator[Update]:
    """A progress bar on stderr: steps (watch) or bytes (download)."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if bytes_ else (MofNCompleteColumn(),)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json,
    ) as bar:
        task = bar.add_task(job_id, total=total)

        def update(done: int, of: int | None = None, stage: str | None = None) -> None:
            bar.update(task, completed=done, total=of or total, description=stage or job_id)

        yield update


@contextmanager
def _appending(path: Path | None) -> Iterator[Callable[[bytes, int], None]]:
    """Writes chunks at their offsets (a partial file is continued); none without a path."""
    if path is None:
        yield lambda data, offset: None
        return
    with path.open("r+b" if path.is_file() else "w+b") as file:

        def write(data: bytes, offset: int) -> None:
            if offset == 0 and not data:
                file.truncate(0)
            file.seek(offset)
            file.write(data)

        yield write


def _check_file(path: Path, final: Final) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(READ_BLOCK):
            digest.update(block)
    if digest.hexdigest() != final.sha256 or path.stat().st_size != final.total_bytes:
        message = f"{path} is not the job's file: its size or sha256 differs"
        raise IntegrityError(grpc.StatusCode.DATA_LOSS, message, None)


def _report(args: argparse.Namespace, info: JobInfo, path: Path | None) -> int:
    if args.json:
        _print_json(_info_fields(info) | ({"path": str(path)} if path is not None else {}))
    elif path is not None:
        err.print(f"saved {path} ({path.stat().st_size} bytes, job {info.id} {info.state.value})")
    else:
        err.print(f"job {info.id} {info.state.value}")
    return EXIT_OK


def _steps(info: JobInfo) -> str:
    if info.progress is None:
        return f"#{info.queue_position} in queue" if info.queue_position else ""
    return f"{info.progress.step}/{info.progress.total_steps}"


def _info_fields(info: JobInfo) -> dict[str, Any]:
    return asdict(info)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str))
