"""Builds the job service from the settings: stores, runner, reader, servicer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from genserve.contract import Modality, spec_for
from genserve.server.interceptors.telemetry import CallRecord
from genserve.server.jobs.artifacts import ArtifactStore, FileArtifactStore
from genserve.server.jobs.metrics import JobMetrics
from genserve.server.jobs.reader import JobReader
from genserve.server.jobs.runner import JobRunner
from genserve.server.jobs.servicer import JOB_MODALITIES, JobServicer
from genserve.server.jobs.settings import JobSettings
from genserve.server.jobs.store import JobStore, SqliteJobStore
from genserve.server.registry import ModelRegistry
from genserve.server.servicers.request import RequestConverter
from genserve.server.settings import Settings
from genserve.v1 import jobs_pb2, jobs_pb2_grpc

if TYPE_CHECKING:  # the stubs' types: not importable at run time
    from obstore.store import ClientConfig, S3Config

JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


@dataclass(frozen=True)
class Jobs:
    runner: JobRunner
    servicer: JobServicer
    metrics: JobMetrics

    def add_to(self, server: grpc.aio.Server) -> None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.servicer, server)  # type: ignore[arg-type]


def build_jobs(
    settings: Settings, registry: ModelRegistry, record_run: Callable[[CallRecord], None]
) -> Jobs:
    config = settings.jobs
    root = config.store_dir if config.store_dir is not None else settings.data_dir / "jobs"
    store = job_store(config, root)
    artifacts = artifact_store(config, root)
    converters = {
        name: RequestConverter(spec_for(Modality(name)), registry, settings)
        for name in JOB_MODALITIES
    }
    runner = JobRunner(store, artifacts, registry, converters, config, record_run)
    reader = JobReader(store, artifacts, runner.notices, settings.media.chunk_size, config.poll_s)
    return Jobs(runner, JobServicer(runner, reader), JobMetrics(runner))


def job_store(config: JobSettings, root: Path) -> JobStore:
    if config.store_url is None:
        return SqliteJobStore(root / "jobs.sqlite3")
    from genserve.server.jobs.postgres_store import PostgresJobStore  # only where used

    return PostgresJobStore(config.store_url)


def artifact_store(config: JobSettings, root: Path) -> ArtifactStore:
    if config.artifacts_url is None:
        return FileArtifactStore(root / "artifacts")
    from obstore.store import S3Store

    from genserve.server.jobs.object_artifacts import ObjectArtifactStore

    config_s3: S3Config = {}
    client: ClientConfig = {}
    if config.s3_endpoint is not None:
        config_s3["endpoint"] = config.s3_endpoint
        client["allow_http"] = config.s3_endpoint.startswith("http://")
    # Credentials and region come from AWS's own variables, read by obstore.
    store = S3Store.from_url(config.artifacts_url, config=config_s3, client_options=client)
    return ObjectArtifactStore(store)
