"""`genserve inspect FILE`: the generation record of a file genserve made, read locally.

    genserve inspect room.png            # the record, field by field
    genserve --json inspect room.png     # {"file": ..., "format": ..., "record": {...}}

Exit status 0 with a record, 1 when the file carries none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .provenance import read_provenance_file

EXIT_OK = 0
EXIT_NO_RECORD = 1


def add_inspect_parser(commands: Any) -> None:
    command = commands.add_parser(
        "inspect", help="print the generation record of a file genserve made (no server)"
    )
    command.add_argument("file", type=Path, help="a PNG, JPEG, WebP, MP4, WAV, OBJ or PLY")


def run(args: argparse.Namespace) -> int:
    found = read_provenance_file(args.file)
    if args.json:
        print(json.dumps({"file": str(args.file), "format": found.format, "record": found.record}))
        return EXIT_OK if found.record is not None else EXIT_NO_RECORD
    console = Console()
    if found.record is None:
        console.print(f"{args.file}: {found.format}, no genserve generation record")
        return EXIT_NO_RECORD
    table = Table(title=f"{args.file} ({found.format})", show_header=False)
    for name, value in found.record.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(name, shown)
    console.print(table)
    return EXIT_OK
