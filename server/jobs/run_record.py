"""The usage-log row of a job's run: a call of its own, joined to the Submit by the
request id and the job id."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from genserve.contract.events import Final
from genserve.server.interceptors.telemetry import CallRecord
from genserve.server.jobs.records import JobRecord
from genserve.server.request_context import CallDetails

RUN_METHOD = "/genserve.v1.JobService/Run"


@dataclass
class RunTimer:
    job: JobRecord
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    start: float = field(default_factory=time.perf_counter)
    first_event_ms: float | None = None
    events: int = 0
    bytes_out: int = 0

    def saw(self, size: int) -> None:
        if self.first_event_ms is None:
            self.first_event_ms = (time.perf_counter() - self.start) * 1000
        self.events += 1
        self.bytes_out += size

    def record(self, code: grpc.StatusCode, detail: str, final: Final | None) -> CallRecord:
        job = self.job
        details = CallDetails(model=job.model, key_id=job.owner or None, job_id=job.id)
        if final is not None:
            details.queued_ms = final.queued_ms
            details.inference_ms = final.inference_ms
            details.encoding_ms = final.encoding_ms
        return CallRecord(
            request_id=job.request_id,
            started_at=self.started_at,
            method=RUN_METHOD,
            peer="job",
            status_code=code,
            response_time_ms=(time.perf_counter() - self.start) * 1000,
            time_to_first_message_ms=self.first_event_ms,
            messages_out=self.events,
            bytes_out=self.bytes_out,
            details=details,
            status_detail=detail,
        )
