"""Runs jobs: one queue per model, one job at a time per model, whether or not anyone
watches. Each run writes its events to the job store and its bytes to the artifact
store; watchers read those, never the engine, so a slow one holds nothing.

After a restart, queued jobs run and running ones run again from the start with their
recorded seed; the artifact writer checks the new bytes against the stored ones. With a
shared store, each server holds a lease on the jobs it accepted or runs, and renews it;
when one stops renewing (killed, cut off), another takes its jobs over the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from genserve.contract import Modality
from genserve.contract.events import Chunk, Final, Header, MediaEvent, Progress
from genserve.server.admission import Cost, admit
from genserve.server.auth.caller import Caller, caller_var
from genserve.server.errors import InvalidArgument, ResourceExhausted, ServingError
from genserve.server.interceptors.telemetry import CallRecord
from genserve.server.jobs.artifacts import ArtifactStore
from genserve.server.jobs.notices import JobNotices
from genserve.server.jobs.records import JobError, JobRecord, JobState
from genserve.server.jobs.run_record import RunTimer
from genserve.server.jobs.settings import JobSettings
from genserve.server.jobs.store import DuplicateJob, JobStore, StoreUnavailable
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import request_id_var, request_time_var
from genserve.server.servicers.request import RequestConverter, learn_speed

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
CANCEL_WAIT_S = 30.0  # for a running job's engine to reach its next step
REMOTE_CANCEL_POLL_S = 0.2  # how often a cancel waits on the server that runs the job
# How much of a lease a server trusts after its last renewal: the margin before another
# server may take its jobs over.
LEASE_TRUST = 0.8


class LeaseLost(Exception):
    """Another server took this job over: this run stops, without ending the job."""


@dataclass(frozen=True)
class _Charge:
    """What a submit charged the caller's key: given back if the job never starts."""

    caller: Caller
    modality: Modality
    cost: Cost


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        registry: ModelRegistry,
        converters: Mapping[str, RequestConverter],
        settings: JobSettings,
        record_run: Callable[[CallRecord], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.notices = JobNotices()
        self.expiries = 0
        self._registry = registry
        self._converters = converters
        self._settings = settings
        self._record_run = record_run
        self._clock = clock
        self._queues: dict[str, deque[str]] = {}  # model -> job ids waiting, oldest first
        self._wakes: dict[str, asyncio.Event] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # by their owner, not by our shutdown
        self._charges: dict[str, _Charge] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._lease_keeper: asyncio.Task[None] | None = None
        self._lease_trusted_until = time.monotonic() + settings.lease_s * LEASE_TRUST
        self._started = False
        # Names this process in the store's leases: unique per start, so that a restarted
        # server never mistakes its predecessor's leases for its own.
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # -- submit ------------------------------------------------------------------------

    async def submit(
        self,
        owner: str,
        modality: str,
        request: Message,
        idempotency_key: str,
        ttl_s: float,
        request_id: str,
    ) -> JobRecord:
        if idempotency_key:
            existing = self.store.by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return existing
        converter = self._converters[modality]
        entry, defaults = converter.resolve(request)
        params = await converter.params(request, defaults)
        ttl_s = ttl_s or self._settings.default_ttl_s
        if ttl_s > self._settings.max_ttl_s:
            raise InvalidArgument(
                "ttl_s", f"must be at most {self._settings.max_ttl_s:.0f}, got {ttl_s:.0f}"
            )
        queue = self._queue(entry.name)
        if len(queue) >= self._settings.max_queued_per_model:
            raise ResourceExhausted(
                f"model {entry.name} has {len(queue)} jobs queued, the most it takes; retry later",
                retry_after_s=5.0,
            )
        quota = int(self._settings.quota_mb * MiB)
        stored = self.store.stored_bytes()
        if stored >= quota:
            raise ResourceExhausted(
                f"the job store holds {stored} bytes, its quota of {quota}: delete finished "
                "jobs or wait for them to expire",
                retry_after_s=60.0,
            )
        spec = converter.spec
        cost = spec.cost(params)
        admit(entry.name, cost, entry.spec.limits, entry.speed, None)
        caller = caller_var.get()
        if caller is not None:
            caller.charge(Modality(spec.name), cost)
        request.seed = params.seed  # type: ignore[attr-defined]  # a re-run makes the same bytes
        now = self._clock()
        job = JobRecord(
            id=secrets.token_hex(16),
            owner=owner,
            modality=spec.name,
            model=entry.name,
            state=JobState.QUEUED,
            request=request.SerializeToString(),
            seed=params.seed,
            request_id=request_id,
            idempotency_key=idempotency_key,
            created_at=now,
            ttl_s=ttl_s,
            expires_at=now + ttl_s,
            lease_owner=self.node,
            lease_until=now + self._settings.lease_s,
        )
        try:
            job = self.store.insert(job)
        except DuplicateJob:  # the same key, submitted at the same moment
            existing = self.store.by_idempotency_key(owner, idempotency_key)
            if existing is None:
                raise
            if caller is not None:
                caller.refund(Modality(spec.name), cost)
            return existing
        if caller is not None:
            self._charges[job.id] = _Charge(caller, Modality(spec.name), cost)
        self._enqueue(job)
        return job

    def queue_position(self, job: JobRecord) -> int:
        """1 = next to run; 0 when not queued here."""
        queue = self._queues.get(job.model)
        if queue is None or job.id not in queue:
            return 0
        return queue.index(job.id) + 1

    def queue_depths(self) -> dict[str, int]:
        return {model: len(queue) for model, queue in self._queues.items()}

    # -- cancel, delete ----------------------------------------------------------------

    async def cancel(self, job: JobRecord) -> JobRecord:
        if job.state is JobState.QUEUED:
            queue = self._queues.get(job.model)
            if queue is not None and job.id in queue:
                queue.remove(job.id)
            cancelled = self._end_if_queued(job)
            if cancelled is not None:
                self._refund(job.id)
                return cancelled
            job = self.store.get(job.id) or job  # it started meanwhile
        task = self._running.get(job.id)
        if job.state is JobState.RUNNING and task is not None:
            self._cancelled.add(job.id)
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_WAIT_S)
        elif job.state is JobState.RUNNING:  # on another server: its holder stops it
            self.store.update(job, cancel_requested=True)
            return await self._until_finished(job)
        current = self.store.get(job.id)
        return current if current is not None else job

    def _end_if_queued(self, job: JobRecord) -> JobRecord | None:
        now = self._clock()
        ended = self.store.update_if(
            job,
            {"state": JobState.QUEUED},
            state=JobState.CANCELLED,
            error=JobError("CANCELLED", "cancelled by caller"),
            finished_at=now,
            expires_at=now + job.ttl_s,
            bytes_written=0,
        )
        if ended is not None:
            self.artifacts.delete(job.id)
            self.notices.notify(job.id)
        return ended

    async def _until_finished(self, job: JobRecord) -> JobRecord:
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            current = self.store.get(job.id)
            if current is None or current.state.finished:
                return current or job
            await asyncio.sleep(REMOTE_CANCEL_POLL_S)
        return self.store.get(job.id) or job

    async def delete(self, job: JobRecord) -> None:
        if not job.state.finished:
            job = await self.cancel(job)
        self.artifacts.delete(job.id)
        self.store.delete(job.id)
        self.notices.notify(job.id)

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Picks up what a previous run of the server left: queued jobs run, running ones
        run again from the start (their bytes so far are checked, not trusted)."""
        if self._started:
            return
        self._started = True
        if not self.store.shared:  # ours alone: whatever the last run left is ours now
            for job in self.store.in_states(JobState.RUNNING, JobState.QUEUED):
                self._take_over(job)
        self._sweeper = asyncio.create_task(self._sweep())
        self._lease_keeper = asyncio.create_task(self._keep_leases())

    def _take_over(self, job: JobRecord) -> None:
        """Makes a job left by a stopped server (this one before a restart, or another)
        ours, and queues it; a job that was running runs again from the start. A cancel
        asked of the stopped server ends it instead."""
        known = job.model in {e.name for e in self._registry.entries()}
        if not known and self.store.shared:
            return  # for a server that serves its model
        # The state too: a cancel or a finish since the orphan was read keeps the job.
        expected = {"state": job.state, "lease_owner": job.lease_owner,
                    "lease_until": job.lease_until}  # fmt: skip
        held = self.store.update_if(
            job,
            expected,
            lease_owner=self.node,
            lease_until=self._clock() + self._settings.lease_s,
            state=JobState.QUEUED,
            bytes_written=0,
        )
        if held is None:  # another server took it first, or it ended meanwhile
            return
        if job.cancel_requested:
            self._end(held, JobState.CANCELLED, JobError("CANCELLED", "cancelled by caller"))
            return
        if job.state is JobState.RUNNING:
            logger.info("job %s was running on %s, which stopped: runs again", job.id,
                        job.lease_owner or "this server")  # fmt: skip
        if not known:
            self._end(held, JobState.FAILED, JobError("NOT_FOUND", f"no model {job.model}"))
            return
        self._enqueue(held)

    async def close(self) -> None:
        """Stops the runs without ending their jobs: they run again at the next start."""
        tasks = [*self._running.values(), *self._workers]
        tasks += [t for t in (self._sweeper, self._lease_keeper) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
        self.store.close()

    # -- running -----------------------------------------------------------------------

    def _queue(self, model: str) -> deque[str]:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = deque()
            self._wakes[model] = asyncio.Event()
            # A context of its own: not the first submitter's deadline, caller and request id.
            worker = asyncio.create_task(self._serve_model(model), context=contextvars.Context())
            self._workers.append(worker)
        return queue

    def _enqueue(self, job: JobRecord) -> None:
        self._queue(job.model).append(job.id)
        self._wakes[job.model].set()
        self.notices.notify(job.id)

    async def _serve_model(self, model: str) -> None:
        queue, wake = self._queues[model], self._wakes[model]
        while True:
            while not queue:
                wake.clear()
                await wake.wait()
            job_id = queue.popleft()
            try:
                job = self._claim(job_id)
            except Exception:  # the store failed: the job's lease runs out, and it runs again
                logger.exception("job %s: claiming it failed", job_id)
                continue
            if job is None:
                continue
            task = asyncio.create_task(
                self._run(job), name=f"job-{job.id}", context=contextvars.Context()
            )
            self._running[job.id] = task
            try:
                await asyncio.wait([task])  # never raises: a cancelled run is its own business
                if task.cancelled() and job.id in self._cancelled:
                    self._end_cancelled_before_start(job)
            except Exception:
                logger.exception("job %s: ending it failed", job.id)
            finally:
                self._running.pop(job.id, None)
                self._cancelled.discard(job.id)

    def _end_cancelled_before_start(self, job: JobRecord) -> None:
        """A cancel that came before the run's first step skipped its handlers."""
        current = self.store.get(job.id)
        if current is not None and current.state is JobState.RUNNING:
            self._refund(job.id)
            self._end(current, JobState.CANCELLED, JobError("CANCELLED", "cancelled by caller"))

    def _claim(self, job_id: str) -> JobRecord | None:
        """The job, now running here; None if it was cancelled or taken over meanwhile."""
        job = self.store.get(job_id)
        if job is None or job.state is not JobState.QUEUED or job.lease_owner != self.node:
            if job is not None and job.state is JobState.CANCELLED:
                self._refund(job_id)  # cancelled through another server before it ran
            self._charges.pop(job_id, None)
            return None
        claimed = self.store.update_if(
            job,
            {"state": JobState.QUEUED, "lease_owner": self.node},
            state=JobState.RUNNING,
            started_at=self._clock(),
            attempts=job.attempts + 1,
            bytes_written=0,
            diverged_at=-1,
            final=None,
            error=None,
        )
        if claimed is not None:
            self.notices.notify(job.id)
        return claimed

    async def _run(self, job: JobRecord) -> None:
        # The engine's log lines name the Submit's id, and the file's generation record
        # holds the Submit's id and time: every attempt of a job writes the same bytes.
        request_id_var.set(job.request_id)
        request_time_var.set(job.created_at)
        timer = RunTimer(job)
        code, detail, final = grpc.StatusCode.UNKNOWN, "", None
        converter = self._converters[job.modality]
        writer = self.artifacts.writer(job.id)
        try:
            request = converter.spec.request_type.FromString(job.request)  # type: ignore[attr-defined]
            entry, defaults = converter.resolve(request)
            params = await converter.params(request, defaults)
            async with self._registry.use(Modality(job.modality), entry.name) as engine:
                async for event in engine.generate(params):
                    timer.saw(len(event.data) if isinstance(event, Chunk) else 0)
                    self._charges.pop(job.id, None)  # it started: no refund
                    job = self._apply(job, event, writer)
                    self.notices.notify(job.id)
                    if isinstance(event, Final):
                        final = event
                        learn_speed(entry, converter.spec.cost(params), event.inference_ms)
            code = grpc.StatusCode.OK
        except asyncio.CancelledError:
            if job.id in self._cancelled:
                code, detail = grpc.StatusCode.CANCELLED, "cancelled by caller"
                self._refund(job.id)
                self._end(job, JobState.CANCELLED, JobError(code.name, detail))
            else:  # our shutdown: the job stays running in the store, to run again
                code, detail = grpc.StatusCode.UNAVAILABLE, "the server stopped; runs again"
            raise
        except (LeaseLost, StoreUnavailable) as error:
            # Not the job's failure: it stays running in the store; whoever holds it
            # when the store answers again (this server or another) runs it again.
            code, detail = grpc.StatusCode.ABORTED, f"the run stopped: {error}"
            logger.warning("job %s: %s", job.id, detail)
        except ServingError as error:
            code, detail = error.grpc_code, str(error)
            self._refund(job.id)
            self._end(job, JobState.FAILED, JobError(code.name, detail))
        except Exception:
            logger.exception("job %s failed", job.id)
            code, detail = grpc.StatusCode.INTERNAL, "internal error: see the server log"
            self._refund(job.id)
            self._end(job, JobState.FAILED, JobError(code.name, detail))
        finally:
            writer.close()
            self._record_run(timer.record(code, detail, final))

    def _apply(self, job: JobRecord, event: MediaEvent, writer: Any) -> JobRecord:
        self._check_lease()
        if isinstance(event, Chunk):
            diverged = writer.write(event.offset, event.data)
            changes: dict[str, Any] = {"bytes_written": event.offset + len(event.data)}
            if diverged is not None and job.diverged_at < 0:
                logger.warning("job %s: the re-run differs from byte %d on", job.id, diverged)
                changes["diverged_at"] = diverged
            return self._held_update(job, **changes)
        if isinstance(event, Progress):
            return self._held_update(job, progress=event)
        if isinstance(event, Header):
            return self._held_update(job, header=event)
        shorter = writer.finish(event.total_bytes)
        now = self._clock()
        changes = {
            "state": JobState.SUCCEEDED,
            "final": event,
            "finished_at": now,
            "expires_at": now + job.ttl_s,
            "bytes_written": event.total_bytes,
        }
        if shorter is not None and job.diverged_at < 0:
            changes["diverged_at"] = shorter
        return self._held_update(job, **changes)

    def _held_update(self, job: JobRecord, **changes: Any) -> JobRecord:
        """A running job's row changes only while this server holds it: a server that
        lost its lease (paused, cut off) never overwrites its successor's row."""
        if not self.store.shared:
            return self.store.update(job, **changes)
        updated = self.store.update_if(job, {"lease_owner": self.node}, **changes)
        if updated is None:
            raise LeaseLost(f"another server took job {job.id} over")
        return updated

    def _check_lease(self) -> None:
        """Before bytes are written: a server whose renewals have failed for most of a
        lease stops, before another can take its jobs over and write the same objects."""
        if self.store.shared and time.monotonic() > self._lease_trusted_until:
            raise LeaseLost("the job store has not renewed this server's leases in time")

    def _end(self, job: JobRecord, state: JobState, error: JobError) -> JobRecord:
        """A job that ends without its file: the partial artifact goes. With a shared
        store, only while this server holds the job: never its successor's row or file."""
        now = self._clock()
        current = self.store.get(job.id) or job
        changes: dict[str, Any] = {
            "state": state,
            "error": error,
            "finished_at": now,
            "expires_at": now + job.ttl_s,
            "bytes_written": 0,
        }
        if self.store.shared:
            ended = self.store.update_if(current, {"lease_owner": self.node}, **changes)
            if ended is None:
                return current
        else:
            ended = self.store.update(current, **changes)
        self.artifacts.delete(job.id)
        self.notices.notify(job.id)
        return ended

    def _refund(self, job_id: str) -> None:
        charge = self._charges.pop(job_id, None)
        if charge is not None:
            charge.caller.refund(charge.modality, charge.cost)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_s)
            try:
                self.expire()
            except Exception:  # the next sweep tries again
                logger.exception("the job sweep failed")

    async def _keep_leases(self) -> None:
        period = self._settings.lease_s / 3
        while True:
            try:
                self.keep_leases()
            except Exception:  # the store is unreachable: try again; leases may run out
                logger.exception("renewing job leases failed")
            await asyncio.sleep(period)

    def keep_leases(self) -> None:
        """Renews this server's leases; stops its runs of jobs that were taken over or
        whose cancel came through another server; takes over jobs whose holder stopped."""
        mine = {*self._running, *(i for queue in self._queues.values() for i in queue)}
        started = time.monotonic()
        held = self.store.renew(self.node, mine, self._clock() + self._settings.lease_s)
        self._lease_trusted_until = started + self._settings.lease_s * LEASE_TRUST
        for job_id, task in list(self._running.items()):
            if job_id not in held:
                logger.warning("job %s was taken over by another server: this run stops", job_id)
                task.cancel()
            elif held[job_id] and job_id not in self._cancelled:
                self._cancelled.add(job_id)
                task.cancel()
        if self.store.shared:
            for job in self.store.orphans(self._clock()):
                self._take_over(job)

    def expire(self) -> int:
        """Deletes the artifacts of finished jobs past their TTL; returns how many."""
        expired = self.store.expired(self._clock())
        for job in expired:
            self.artifacts.delete(job.id)
            self.store.update(job, state=JobState.EXPIRED, bytes_written=0)
            self.notices.notify(job.id)
        self.expiries += len(expired)
        return len(expired)
