"""`genserve keys create|revoke|list`: the API keys file, edited where the server runs.

`create` prints the new key's secret once, on stdout; the file keeps only its salted
hash. A running server picks up the change on SIGHUP, or by itself within
`--auth.watch-s` seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from genserve.contract import SPECS

DEFAULT_KEYS_FILE = Path("var/keys.json")


def _budget(value: str) -> tuple[str, float]:
    modality, _, units = value.partition("=")
    try:
        return modality, float(units)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected MODALITY=UNITS") from None


def add_keys_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="API keys: create, revoke, list (the keys file)")
    keys.add_argument("--keys-file", type=Path, default=DEFAULT_KEYS_FILE)
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument("name", help="the key id: logged, shown in metrics; not secret")
    create.add_argument(
        "--model", action="append", default=[], help="a model it may call (repeatable)"
    )
    create.add_argument(
        "--modality",
        action="append",
        default=[],
        choices=[spec.name for spec in SPECS],
        help="a modality it may call (repeatable); with neither option: everything",
    )
    create.add_argument(
        "--budget",
        action="append",
        default=[],
        type=_budget,
        metavar="MODALITY=UNITS",
        help="units per minute for a modality (text tokens, image w*h*steps, ...)",
    )
    revoke = actions.add_parser("revoke", help="remove a key")
    revoke.add_argument("name")
    actions.add_parser("list", help="key ids and what they may call (never secrets)")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from genserve.server.auth.keys import create_key, load_keys, revoke_key

    path: Path = args.keys_file
    try:
        if args.keys_command == "create":
            secret = create_key(
                path,
                args.name,
                models=tuple(args.model),
                modalities=tuple(args.modality),
                budget_per_minute=dict(args.budget),
            )
            print(secret)
            print(f"key {args.name} added to {path}; its secret is shown only now", file=sys.stderr)
            return 0
        if args.keys_command == "revoke":
            if not revoke_key(path, args.name):
                print(f"error: no key {args.name!r} in {path}", file=sys.stderr)
                return 1
            print(f"key {args.name} revoked in {path}", file=sys.stderr)
            return 0
        listed = [
            key.model_dump(mode="json", exclude={"hash"}, exclude_none=True)
            for key in load_keys(path).keys
        ]
        print(json.dumps(listed, indent=2))
        return 0
    except (OSError, ValueError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
