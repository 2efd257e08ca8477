"""How the server runs its worker processes (`--worker.*`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WorkerSettings(BaseModel):
    start_timeout_s: float = Field(
        600.0, gt=0, description="for a worker to load its model; past it the load failed"
    )
    restart_backoff_s: float = Field(
        0.5, gt=0, description="wait before restarting a worker that died; doubles per failure"
    )
    max_backoff_s: float = Field(30.0, gt=0, description="the longest wait between restarts")
    window_events: int = Field(
        16, ge=2, description="events a request's worker may send ahead of its reader"
    )
    stats_interval_s: float = Field(
        0.2, gt=0, description="how often a worker reports its engine's stats"
    )
