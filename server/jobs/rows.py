"""A JobRecord as a database row and back: the same columns in every job store."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from genserve.contract.events import Final, Header, Progress
from genserve.server.jobs.records import JobError, JobRecord, JobState

EVENT_TYPES: dict[str, type[Any]] = {"header": Header, "progress": Progress, "final": Final}
COLUMNS = [f.name for f in fields(JobRecord) if f.name != "sequence"]
OPEN_STATES = (JobState.QUEUED, JobState.RUNNING)
DONE_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def to_row(job: JobRecord) -> dict[str, Any]:
    row: dict[str, Any] = {c: getattr(job, c) for c in COLUMNS}
    row["state"] = job.state.value
    for name in EVENT_TYPES:
        event = getattr(job, name)
        row[name] = None if event is None else json.dumps(asdict(event))
    row["error"] = None if job.error is None else json.dumps(asdict(job.error))
    return row


def from_row(row: Mapping[str, Any]) -> JobRecord:
    values: dict[str, Any] = dict(row)
    values["state"] = JobState(values["state"])
    values["request"] = bytes(values["request"])  # PostgreSQL's bytea is a memoryview
    values["cancel_requested"] = bool(values["cancel_requested"])  # SQLite's is 0 or 1
    for name, kind in EVENT_TYPES.items():
        text = values[name]
        values[name] = None if text is None else kind(**json.loads(text))
    values["error"] = None if values["error"] is None else JobError(**json.loads(values["error"]))
    return JobRecord(**values)
