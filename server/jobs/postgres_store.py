"""The job store shared by several servers: PostgreSQL through psycopg's connection pool.

The same queries as SQLite (store.py). The pool reconnects after the database restarts;
the schema is created once, under an advisory lock, by whichever server starts first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from genserve.server.jobs.store import DuplicateJob, SqlJobStore, StoreUnavailable

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    sequence BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    modality TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    request BYTEA NOT NULL,
    seed BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    ttl_s DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    finished_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    header TEXT,
    progress TEXT,
    final TEXT,
    error TEXT,
    bytes_written BIGINT NOT NULL DEFAULT 0,
    diverged_at BIGINT NOT NULL DEFAULT -1,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key != '';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, sequence);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, expires_at);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_owner);
"""
SCHEMA_LOCK = 0x67656E6A  # "genj": one server at a time creates the schema
# Calls run on the event loop: a database that is down costs each call this long, not
# the pool's default 30 s.
CONNECT_TIMEOUT_S = 5.0


class PostgresJobStore(SqlJobStore):
    shared = True
    placeholder = "%s"

    def __init__(self, conninfo: str, max_connections: int = 4) -> None:
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "row_factory": dict_row},
            connection_class=psycopg.Connection[dict[str, Any]],
            check=ConnectionPool.check_connection,
            open=True,
            name="genserve-jobs",
        )
        self._pool.wait(timeout=30.0)
        with self._pool.connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            connection.execute(POSTGRES_SCHEMA)

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        try:
            with self._pool.connection(timeout=CONNECT_TIMEOUT_S) as connection:
                cursor = connection.execute(self._sql(sql), list(args))
                rows: list[Mapping[str, Any]] = []
                if cursor.description is not None:
                    rows.extend(cursor.fetchall())
                return rows
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise StoreUnavailable(f"the job store (PostgreSQL) is unreachable: {error}") from None

    def _insert_rows(self, sql: str, args: Sequence[Any]) -> list[Mapping[str, Any]]:
        try:
            return self._rows(sql, args)
        except psycopg.errors.UniqueViolation as error:
            raise DuplicateJob(str(error)) from None

    def close(self) -> None:
        self._pool.close()
