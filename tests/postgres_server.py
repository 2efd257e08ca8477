"""A real PostgreSQL for the tests: Debian's `postgresql` binaries (the make step installs
them), a cluster in a temporary directory, trust auth on 127.0.0.1, stopped at the end.
As root (CI), the server runs as the package's `postgres` user: postgres refuses root."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.test_load_shutdown import free_port

USER = "genserve"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL: the make step installs Debian's postgresql package")
    return Path(initdb).parent


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(_as_owner(command), cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stdout}{done.stderr}")


@contextmanager
def postgres() -> Iterator[str]:
    """Yields a conninfo for a fresh cluster's `postgres` database. Its directory is a
    temporary one of its own: pytest's are private to root, and postgres is not root."""
    binaries = postgres_bin()
    with tempfile.TemporaryDirectory(prefix="genserve-postgres-") as name:
        root = Path(name)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        data, port, pg_ctl = root / "data", free_port(), str(binaries / "pg_ctl")
        _run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", USER,
              "--no-sync", "-E", "UTF8"], root)  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
             root)  # fmt: skip
        try:
            yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], root)
