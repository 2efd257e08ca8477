"""`genserve inspect FILE`: the generation record of a file genserve made, read locally.

    genserve inspect room.png            # the record, field by field
    genserve --json inspect room.png     # {"file": ..., "format": ..., "record": {...},
                                         #  "c2pa": {"state": ..., "failures": [...]}}
    genserve inspect room.png --trust-anchors ca.pem   # C2PA trust in a private CA

With c2pa-python installed, the C2PA validation state of a PNG, JPEG, WebP, WAV or MP4
is printed too (Valid, Trusted, Invalid, or none).

Exit status 0 with a record, 1 when the file carries none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .provenance import C2paValidation, read_provenance_file

EXIT_OK = 0
EXIT_NO_RECORD = 1


def add_inspect_parser(commands: Any) -> None:
    command = commands.add_parser(
        "inspect", help="print the generation record of a file genserve made (no server)"
    )
    command.add_argument("file", type=Path, help="a PNG, JPEG, WebP, MP4, WAV, OBJ or PLY")
    command.add_argument(
        "--trust-anchors", type=Path, help="PEM CA certificates C2PA signatures are trusted from"
    )


def c2pa_json(validation: C2paValidation | None) -> dict[str, Any] | None:
    if validation is None:
        return None
    return {
        "state": validation.state,
        "failures": list(validation.failures),
        "error": validation.error,
    }


def c2pa_line(validation: C2paValidation | None) -> str | None:
    if validation is None:
        return None
    if validation.state is None:
        return "C2PA: no content credentials"
    failures = f" ({', '.join(validation.failures)})" if validation.failures else ""
    error = f" ({validation.error})" if validation.error else ""
    return f"C2PA: {validation.state}{failures}{error}"


def run(args: argparse.Namespace) -> int:
    anchors = args.trust_anchors.read_text() if getattr(args, "trust_anchors", None) else None
    found = read_provenance_file(args.file, anchors)
    if args.json:
        about = {"file": str(args.file), "format": found.format, "record": found.record}
        print(json.dumps({**about, "c2pa": c2pa_json(found.c2pa)}))
        return EXIT_OK if found.record is not None else EXIT_NO_RECORD
    console = Console()
    c2pa = c2pa_line(found.c2pa)
    if found.record is None:
        console.print(f"{args.file}: {found.format}, no genserve generation record")
        if c2pa:
            console.print(c2pa)
        return EXIT_NO_RECORD
    table = Table(title=f"{args.file} ({found.format})", show_header=False)
    for name, value in found.record.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
        table.add_row(name, shown)
    console.print(table)
    if c2pa:
        console.print(c2pa)
    return EXIT_OK
