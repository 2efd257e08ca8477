"""How the server keeps jobs (`--jobs.*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

DAY_S = 24 * 3600.0


class JobSettings(BaseModel):
    enabled: bool = Field(True, description="serve genserve.v1.JobService")
    store_dir: Path | None = Field(
        None, description="the job store (SQLite) and artifacts; default: <data-dir>/jobs"
    )
    default_ttl_s: float = Field(DAY_S, gt=0, description="how long a finished artifact is kept")
    max_ttl_s: float = Field(30 * DAY_S, gt=0, description="the longest ttl_s a submit may ask")
    quota_mb: float = Field(10240.0, gt=0, description="artifact bytes kept; past it, submits 429")
    max_queued_per_model: int = Field(16, ge=1, description="jobs waiting per model")
    sweep_s: float = Field(5.0, gt=0, description="how often expired artifacts are deleted")
    poll_s: float = Field(0.5, gt=0, description="watchers re-read the store at least this often")
    # Several servers, one set of jobs: a shared job store and a shared artifact store.
    # Credentials never go here: PGPASSWORD (or ~/.pgpass) and AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY, read by the drivers.
    store_url: str | None = Field(
        None, description="a PostgreSQL conninfo (postgresql://host/db) to share jobs"
    )
    artifacts_url: str | None = Field(
        None, description="an object store URL (s3://bucket/prefix) for the artifacts"
    )
    s3_endpoint: str | None = Field(
        None, description="an S3-compatible endpoint (http://host:port) instead of AWS"
    )
    lease_s: float = Field(
        15.0, gt=0, description="a server that stops renewing for this long loses its jobs"
    )
