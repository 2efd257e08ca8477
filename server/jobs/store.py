"""The job store: one row per job. SQLite in WAL mode by default (embedded, one server);
the JobStore protocol is what a shared store for several servers implements.

Rows are written from the event loop; each statement is a small indexed write.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Protocol

from genserve.contract.events import Final, Header, Progress
from genserve.server.jobs.records import JobError, JobRecord, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    modality TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    request BLOB NOT NULL,
    seed INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    ttl_s REAL NOT NULL,
    expires_at REAL NOT NULL,
    started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    header TEXT,
    progress TEXT,
    final TEXT,
    error TEXT,
    bytes_written INTEGER NOT NULL DEFAULT 0,
    diverged_at INTEGER NOT NULL DEFAULT -1
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, sequence);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, expires_at);
"""

_EVENT_TYPES: dict[str, type[Any]] = {"header": Header, "progress": Progress, "final": Final}
_COLUMNS = [f.name for f in fields(JobRecord) if f.name != "sequence"]


class JobStore(Protocol):
    def insert(self, job: JobRecord) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None: ...
    def update(self, job: JobRecord, **changes: Any) -> JobRecord: ...
    def delete(self, job_id: str) -> None: ...
    def page(
        self, owner: str, state: JobState | None, before: int | None, size: int
    ) -> list[JobRecord]: ...
    def in_states(self, *states: JobState) -> list[JobRecord]: ...
    def expired(self, now: float) -> list[JobRecord]: ...
    def stored_bytes(self) -> int: ...
    def counts(self) -> dict[JobState, int]: ...
    def close(self) -> None: ...


class SqliteJobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a process crash
        self._db.executescript(SCHEMA)

    def insert(self, job: JobRecord) -> JobRecord:
        values = _to_row(job)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        cursor = self._db.execute(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            [values[c] for c in _COLUMNS],
        )
        return replace(job, sequence=int(cursor.lastrowid or 0))

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        row = self._db.execute(
            "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        ).fetchone()
        return None if row is None else _from_row(row)

    def update(self, job: JobRecord, **changes: Any) -> JobRecord:
        updated = replace(job, **changes)
        values = _to_row(updated)
        columns = list(changes)
        self._db.execute(
            f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
            [*(values[c] for c in columns), job.id],
        )
        return updated

    def delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def page(
        self, owner: str, state: JobState | None, before: int | None, size: int
    ) -> list[JobRecord]:
        """Newest first: the owner's jobs inserted before `before` (a sequence number)."""
        query = "SELECT * FROM jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if state is not None:
            query += " AND state = ?"
            args.append(state.value)
        if before is not None:
            query += " AND sequence < ?"
            args.append(before)
        query += " ORDER BY sequence DESC LIMIT ?"
        args.append(size)
        return [_from_row(row) for row in self._db.execute(query, args)]

    def in_states(self, *states: JobState) -> list[JobRecord]:
        """Oldest first."""
        marks = ", ".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY sequence",
            [s.value for s in states],
        )
        return [_from_row(row) for row in rows]

    def expired(self, now: float) -> list[JobRecord]:
        """Finished jobs past their TTL whose artifact is still kept."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE state IN (?, ?, ?) AND expires_at <= ?",
            (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, now),
        )
        return [_from_row(row) for row in rows]

    def stored_bytes(self) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(bytes_written), 0) FROM jobs WHERE state != ?",
            (JobState.EXPIRED,),
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[JobState, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {JobState(state): int(n) for state, n in rows}

    def close(self) -> None:
        self._db.close()


def _to_row(job: JobRecord) -> dict[str, Any]:
    row: dict[str, Any] = {c: getattr(job, c) for c in _COLUMNS}
    row["state"] = job.state.value
    for name in _EVENT_TYPES:
        event = getattr(job, name)
        row[name] = None if event is None else json.dumps(asdict(event))
    row["error"] = None if job.error is None else json.dumps(asdict(job.error))
    return row


def _from_row(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = dict(row)
    values["state"] = JobState(values["state"])
    for name, kind in _EVENT_TYPES.items():
        text = values[name]
        values[name] = None if text is None else kind(**json.loads(text))
    values["error"] = None if values["error"] is None else JobError(**json.loads(values["error"]))
    return JobRecord(**values)
