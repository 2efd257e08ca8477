"""The persisted usage log: one SQLite row per RPC, failures and cancellations included.

Chapter 3's columns (request id, UTC datetime, method, client address, response time,
status code, successful) plus time to first message, bytes out and what the servicer
reported (tokens, queue/inference/encoding times), the caller's key id and, for ray-placed
models, the replica that served it, a failed call's status message (why it failed) and,
for the JobService and a job's run, the job id.
Sizes and counts only: never a prompt or an output.
Rows are written by one background thread so an RPC never waits on the disk, even while it
is being cancelled.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path

from genserve.server.interceptors.telemetry import CallRecord

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    datetime_utc TEXT NOT NULL,
    method TEXT NOT NULL,
    client_address TEXT NOT NULL,
    response_time_ms REAL NOT NULL,
    status_code TEXT NOT NULL,
    successful INTEGER NOT NULL,
    time_to_first_message_ms REAL,
    messages_out INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    queued_ms REAL,
    inference_ms REAL,
    encoding_ms REAL,
    model TEXT,
    key_id TEXT,
    upstream_ms REAL,
    replica TEXT,
    status_detail TEXT,
    job_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_request_id ON usage (request_id);
"""

INSERT = """
INSERT INTO usage (
    request_id, datetime_utc, method, client_address, response_time_ms, status_code,
    successful, time_to_first_message_ms, messages_out, bytes_out, prompt_tokens,
    completion_tokens, queued_ms, inference_ms, encoding_ms, model, key_id, upstream_ms,
    replica, status_detail, job_id
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Columns added after the first release, with their types: an older log gains them.
ADDED_COLUMNS = {
    "model": "TEXT",  # models by name
    "key_id": "TEXT",  # callers with keys
    "upstream_ms": "REAL",  # models served elsewhere
    "replica": "TEXT",  # ray-placed models
    "status_detail": "TEXT",  # why a call failed (a worker that died, say)
    "job_id": "TEXT",  # long media as jobs: joins a job's calls and its run
}

_STOP = object()


class UsageLog:
    """A CallSink that appends each finished call to SQLite."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._rows: queue.Queue[object] = queue.Queue()
        connection = sqlite3.connect(path)
        with connection:
            connection.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            connection.executescript(SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(usage)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in columns:
                    connection.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}")
        connection.close()
        self._writer = threading.Thread(target=self._write_rows, name="usage-log", daemon=True)
        self._writer.start()

    def __call__(self, record: CallRecord) -> None:
        self._rows.put(record)

    def flush(self) -> None:
        """Block until every row recorded so far is on disk."""
        self._rows.join()

    def close(self) -> None:
        self._rows.put(_STOP)
        self._writer.join()

    def _write_rows(self) -> None:
        connection = sqlite3.connect(self.path)
        try:
            while True:
                item = self._rows.get()
                try:
                    if item is _STOP:
                        return
                    assert isinstance(item, CallRecord)
                    with connection:
                        connection.execute(INSERT, _row(item))
                except Exception:  # a bad row must not stop the log
                    logger.exception("could not write a usage-log row")
                finally:
                    self._rows.task_done()
        finally:
            connection.close()


def _row(record: CallRecord) -> tuple[object, ...]:
    details = record.details
    return (
        record.request_id,
        record.started_at.isoformat(),
        record.method,
        record.peer,
        record.response_time_ms,
        record.status_code.name,
        int(record.successful),
        record.time_to_first_message_ms,
        record.messages_out,
        record.bytes_out,
        details.prompt_tokens,
        details.completion_tokens,
        details.queued_ms,
        details.inference_ms,
        details.encoding_ms,
        details.model,
        details.key_id,
        details.upstream_ms,
        details.replica,
        record.status_detail or None,
        details.job_id,
    )
