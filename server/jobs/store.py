"""The job store: one row per job. SQLite in WAL mode by default (embedded, one server);
PostgreSQL (postgres_store.py) when several servers share their jobs. Both run the SQL
here; they differ in their DDL, their driver and their placeholders.

Rows are written from the event loop; each statement is a small indexed write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from genserve.server.jobs.records import JobRecord, JobState
from genserve.server.jobs.rows import COLUMNS, DONE_STATES, OPEN_STATES, from_row, to_row


class DuplicateJob(Exception):
    """The same (owner, idempotency key) as a job already stored."""


class StoreUnavailable(Exception):
    """The job store cannot be reached (a shared store's database is down)."""


class JobStore(Protocol):
    # Several servers use this store at once: a job whose holder stops renewing its
    # lease is taken over by another. Embedded stores have one server, which takes all.
    shared: bool

    def insert(self, job: JobRecord) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None: ...
    def update(self, job: JobRecord, **changes: Any) -> JobRecord: ...
    def update_if(
        self, job: JobRecord, expected: Mapping[str, Any], **changes: Any
    ) -> JobRecord | None:
        """Changes the row only if its columns still hold `expected`; None if not."""
        ...

    def renew(self, owner: str, job_ids: Collection[str], until: float) -> dict[str, bool]:
        """Extends `owner`'s leases on those of `job_ids` it still holds open; returns
        them, each with whether another server asked to cancel it."""
        ...

    def orphans(self, now: float) -> list[JobRecord]:
        """Open jobs whose holder's lease ran out, oldest first."""
        ...

    def delete(self, job_id: str) -> None: ...
    def page(
        self, owner: str, state: JobState | None, before: int | None, size: int
    ) -> list[JobRecord]: ...
    def in_states(self, *states: JobState) -> list[JobRecord]: ...
    def expired(self, now: float) -> list[JobRecord]: ...
    def stored_bytes(self) -> int: ...
    def counts(self) -> dict[JobState, int]: ...
    def close(self) -> None: ...


class SqlJobStore:
    """The queries, written with `?` placeholders; a subclass runs them."""

    shared = False
    placeholder = "?"

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _marks(self, n: int) -> str:
        return ", ".join("?" for _ in range(n))

    def insert(self, job: JobRecord) -> JobRecord:
        values = to_row(job)
        rows = self._insert_rows(
            f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({self._marks(len(COLUMNS))}) "
            "RETURNING sequence",
            [values[c] for c in COLUMNS],
        )
        return replace(job, sequence=int(rows[0]["sequence"]))

    def _insert_rows(self, sql: str, args: Sequence[Any]) -> list[Mapping[str, Any]]:
        return self._rows(sql, args)

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key))

    def update(self, job: JobRecord, **changes: Any) -> JobRecord:
        updated = replace(job, **changes)
        values = to_row(updated)
        columns = list(changes)
        self._rows(
            f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ? RETURNING id",
            [*(values[c] for c in columns), job.id],
        )
        return updated

    def update_if(
        self, job: JobRecord, expected: Mapping[str, Any], **changes: Any
    ) -> JobRecord | None:
        values = to_row(replace(job, **changes))
        wanted = to_row(replace(job, **expected))
        rows = self._rows(
            f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ? "
            f"{''.join(f' AND {c} = ?' for c in expected)} RETURNING *",
            [*(values[c] for c in changes), job.id, *(wanted[c] for c in expected)],
        )
        return from_row(rows[0]) if rows else None

    def renew(self, owner: str, job_ids: Collection[str], until: float) -> dict[str, bool]:
        # Only what the server queues or runs now: a job it dropped (a failed claim, a
        # store error) is not kept alive by it, so its lease runs out and it runs again.
        if not job_ids:
            return {}
        ids = sorted(job_ids)
        rows = self._rows(
            "UPDATE jobs SET lease_until = ? WHERE lease_owner = ? AND state IN (?, ?) "
            f"AND id IN ({self._marks(len(ids))}) RETURNING id, cancel_requested",
            (until, owner, *(s.value for s in OPEN_STATES), *ids),
        )
        return {str(row["id"]): bool(row["cancel_requested"]) for row in rows}

    def orphans(self, now: float) -> list[JobRecord]:
        return self._many(
            "SELECT * FROM jobs WHERE state IN (?, ?) AND lease_until < ? ORDER BY sequence",
            (*(s.value for s in OPEN_STATES), now),
        )

    def delete(self, job_id: str) -> None:
        self._rows("DELETE FROM jobs WHERE id = ? RETURNING id", (job_id,))

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
        return self._many(query, args)

    def in_states(self, *states: JobState) -> list[JobRecord]:
        """Oldest first."""
        return self._many(
            f"SELECT * FROM jobs WHERE state IN ({self._marks(len(states))}) ORDER BY sequence",
            [s.value for s in states],
        )

    def expired(self, now: float) -> list[JobRecord]:
        """Finished jobs past their TTL whose artifact is still kept."""
        return self._many(
            "SELECT * FROM jobs WHERE state IN (?, ?, ?) AND expires_at <= ?",
            (*(s.value for s in DONE_STATES), now),
        )

    def stored_bytes(self) -> int:
        rows = self._rows(
            "SELECT COALESCE(SUM(bytes_written), 0) AS total FROM jobs WHERE state != ?",
            (JobState.EXPIRED.value,),
        )
        return int(rows[0]["total"])

    def counts(self) -> dict[JobState, int]:
        rows = self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {JobState(row["state"]): int(row["n"]) for row in rows}

    def _one(self, sql: str, args: Sequence[Any]) -> JobRecord | None:
        rows = self._rows(sql, args)
        return from_row(rows[0]) if rows else None

    def _many(self, sql: str, args: Sequence[Any]) -> list[JobRecord]:
        return [from_row(row) for row in self._rows(sql, args)]


SQLITE_SCHEMA = """
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
    diverged_at INTEGER NOT NULL DEFAULT -1,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, sequence);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, expires_at);
"""

# Columns added since the first release, for a store written by an older server.
SQLITE_ADDED = {
    "lease_owner": "TEXT NOT NULL DEFAULT ''",
    "lease_until": "REAL NOT NULL DEFAULT 0",
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
}


class SqliteJobStore(SqlJobStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # the metrics thread reads it too
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against a process crash
        self._db.executescript(SQLITE_SCHEMA)
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in SQLITE_ADDED.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    def _insert_rows(self, sql: str, args: Sequence[Any]) -> list[Mapping[str, Any]]:
        try:
            return self._rows(sql, args)
        except sqlite3.IntegrityError as error:
            raise DuplicateJob(str(error)) from None

    def close(self) -> None:
        self._db.close()
