"""The job path against a direct Generate, and a watcher's re-attach, on a server process.

One tiny video request (tiny-stable-video-diffusion, 25 frames 64x64, 4 steps, seed 42),
served by `python -m genserve.server` with its default job store (SQLite and files under
its data dir), timed side by side in one run:

- direct: VideoService.Generate, from the call to the final event;
- job: JobService.Submit, then Watch(from_offset=0), from the Submit to the final event;
  and the same run's full Download after it (Submit to the last byte).

Then a watcher's re-attach: Watch(id, from_offset=N), from the call to the first event,
on a finished job (N = half its file) and on a running one (N = the bytes it has written
so far), over the connection the client already has and over a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from bench.server_process import served_manifest
from bench.timing import alternate
from genserve.server.manifest import Modality, load_manifest, manifest_path
from genserve.v1 import jobs_pb2, jobs_pb2_grpc, video_pb2, video_pb2_grpc

MODEL = "tiny-stable-video-diffusion"
FRAMES, SIDE, STEPS, SEED = 25, 64, 4, 42
CALL_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 300.0
RUNNING = jobs_pb2.JOB_STATE_RUNNING
FINISHED = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_CANCELLED,
    jobs_pb2.JOB_STATE_EXPIRED,
}


def video_manifest() -> dict[str, Any]:
    """The tiny profile's video model alone, preloaded."""
    spec = next(s for s in load_manifest(manifest_path("tiny")).specs(Modality.VIDEO))
    assert spec.name == MODEL, spec.name
    entry = spec.model_copy(update={"load_policy": "preload", "default": True})
    return {"video": [entry.model_dump(mode="json", exclude_none=True)]}


def source_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (200, 90, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def video_request(steps: int = STEPS) -> video_pb2.VideoGenerateRequest:
    return video_pb2.VideoGenerateRequest(
        image=source_png(),
        num_frames=FRAMES,
        width=SIDE,
        height=SIDE,
        num_inference_steps=steps,
        seed=SEED,
        model=MODEL,
    )


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


@dataclass
class DirectRun:
    final_ms: float  # the call to the final event
    sha256: str
    total_bytes: int
    inference_ms: float
    encoding_ms: float


@dataclass
class JobRun:
    submit_ms: float  # Submit's reply
    first_event_ms: float  # Submit to Watch's first event (the header)
    final_ms: float  # Submit to Watch's final event
    download_ms: float  # Submit to the last byte of the full Download after the final
    sha256: str  # of the watched chunks
    downloaded_sha256: str
    final_sha256: str  # what the job's final event says
    inference_ms: float
    encoding_ms: float
    queued_ms: float
    # Server clock (the same machine): when the job started and finished, as Get says,
    # against the client's clock at Submit and at the final event.
    start_lag_ms: float  # Submit's call to the job's started_at
    final_lag_ms: float  # the job's finished_at to the final reaching the watcher
    job_id: str = ""
    total_bytes: int = 0


@dataclass
class Recorder:
    """What each side's calls measured, in call order (the first is alternate's warm-up)."""

    direct: list[DirectRun] = field(default_factory=list)
    job: list[JobRun] = field(default_factory=list)


def direct_call(channel: grpc.Channel, recorder: Recorder) -> Callable[[], object]:
    stub = video_pb2_grpc.VideoServiceStub(channel)
    request = video_request()

    def call() -> object:
        digest = hashlib.sha256()
        start = time.perf_counter()
        for event in stub.Generate(request, timeout=STREAM_TIMEOUT_S):
            kind = event.WhichOneof("event")
            if kind == "chunk":
                digest.update(event.chunk.data)
            elif kind == "final":
                final_ms = _ms(start)
                timings = event.final.timings
                recorder.direct.append(
                    DirectRun(
                        final_ms,
                        digest.hexdigest(),
                        event.final.total_bytes,
                        timings.inference_ms,
                        timings.encoding_ms,
                    )
                )
                return None
        raise RuntimeError("the Generate stream ended without a final event")

    return call


def job_call(channel: grpc.Channel, recorder: Recorder) -> Callable[[], object]:
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    submit = jobs_pb2.SubmitJobRequest(video=video_request())

    def call() -> object:
        digest = hashlib.sha256()
        first_event_ms = final_ms = 0.0
        final: Any = None
        wall_submit = time.time()
        start = time.perf_counter()
        job = stub.Submit(submit, timeout=CALL_TIMEOUT_S)
        submit_ms = _ms(start)
        watch = jobs_pb2.WatchJobRequest(id=job.id, from_offset=0)
        for event in stub.Watch(watch, timeout=STREAM_TIMEOUT_S):
            if not first_event_ms:
                first_event_ms = _ms(start)
            kind = event.WhichOneof("event")
            if kind == "chunk":
                digest.update(event.chunk.data)
            elif kind == "final":
                final_ms = _ms(start)
                wall_final = time.time()
                final = event.final
                break
        if final is None:
            raise RuntimeError(f"job {job.id}'s Watch ended without a final event")
        downloaded = hashlib.sha256()
        download = jobs_pb2.DownloadJobRequest(id=job.id, offset=0, length=0)
        for chunk in stub.Download(download, timeout=STREAM_TIMEOUT_S):
            downloaded.update(chunk.data)
        download_ms = _ms(start)
        done = stub.Get(jobs_pb2.GetJobRequest(id=job.id), timeout=CALL_TIMEOUT_S)
        recorder.job.append(
            JobRun(
                submit_ms=submit_ms,
                first_event_ms=first_event_ms,
                final_ms=final_ms,
                download_ms=download_ms,
                sha256=digest.hexdigest(),
                downloaded_sha256=downloaded.hexdigest(),
                final_sha256=final.sha256,
                inference_ms=final.timings.inference_ms,
                encoding_ms=final.timings.encoding_ms,
                queued_ms=final.timings.queued_ms,
                start_lag_ms=(done.started_at - wall_submit) * 1000,
                final_lag_ms=(wall_final - done.finished_at) * 1000,
                job_id=job.id,
                total_bytes=final.total_bytes,
            )
        )
        return None

    return call


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2)


def overhead(
    channel: grpc.Channel, repeats: int
) -> tuple[dict[str, Any], list[JobRun], list[DirectRun]]:
    recorder = Recorder()
    alternate(direct_call(channel, recorder), job_call(channel, recorder), repeats)
    direct, jobs = recorder.direct[1:], recorder.job[1:]  # past the warm-up calls
    direct_ms = statistics.median(r.final_ms for r in direct)
    job_ms = statistics.median(r.final_ms for r in jobs)
    download_ms = statistics.median(r.download_ms for r in jobs)
    # Each job's watched bytes, its download and its final's sha256 agree. A direct call's
    # file is not the job's: its generation record names its own request id and time.
    consistent = all(r.sha256 == r.downloaded_sha256 == r.final_sha256 for r in jobs)
    sizes = {r.total_bytes for r in jobs} | {r.total_bytes for r in direct}
    row = {
        "request": f"video, {FRAMES} frames {SIDE}x{SIDE}, {STEPS} steps, seed {SEED}",
        "repeats": repeats,
        "direct_final_ms": round(direct_ms, 1),
        "job_final_ms": round(job_ms, 1),
        "job_download_ms": round(download_ms, 1),
        "job_over_direct": round(job_ms / direct_ms, 4),
        "job_download_over_direct": round(download_ms / direct_ms, 4),
        "direct_inference_ms": _median([r.inference_ms for r in direct]),
        "job_inference_ms": _median([r.inference_ms for r in jobs]),
        "direct_encoding_ms": _median([r.encoding_ms for r in direct]),
        "job_encoding_ms": _median([r.encoding_ms for r in jobs]),
        # The call's time outside the model (denoising, then encoding): what each path
        # adds, less sensitive to the load on a shared machine than the totals.
        "direct_outside_model_ms": _median(
            [r.final_ms - r.inference_ms - r.encoding_ms for r in direct]
        ),
        "job_outside_model_ms": _median(
            [r.final_ms - r.inference_ms - r.encoding_ms for r in jobs]
        ),
        "job_download_outside_model_ms": _median(
            [r.download_ms - r.inference_ms - r.encoding_ms for r in jobs]
        ),
        "job_submit_ms": _median([r.submit_ms for r in jobs]),
        "job_first_event_ms": _median([r.first_event_ms for r in jobs]),
        "job_start_lag_ms": _median([r.start_lag_ms for r in jobs]),
        "job_final_lag_ms": _median([r.final_lag_ms for r in jobs]),
        "bytes": jobs[-1].total_bytes,
        "job_bytes_consistent": consistent,
        "same_size_as_direct": len(sizes) == 1,
        "direct_runs_ms": [round(r.final_ms, 1) for r in direct],
        "job_runs_ms": [round(r.final_ms, 1) for r in jobs],
    }
    return row, jobs, direct


def watch_first_event(
    channel: grpc.Channel, job_id: str, offset: int, to_chunk: bool = True
) -> tuple[float, float, str]:
    """Watch(job_id, offset): ms to the first event and (to_chunk) to the first chunk, 0
    when the stream was left before one; and the first event's kind. The stream is then
    cancelled: without to_chunk, right after its first event (a running job's chunks
    come only when its frames are encoded, at the end of the run)."""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    request = jobs_pb2.WatchJobRequest(id=job_id, from_offset=offset)
    start = time.perf_counter()
    stream = stub.Watch(request, timeout=STREAM_TIMEOUT_S)
    first = 0.0
    first_kind = ""
    chunk_ms = 0.0
    try:
        for event in stream:
            kind = event.WhichOneof("event")
            if not first:
                first, first_kind = _ms(start), kind
                if not to_chunk:
                    break
            if kind == "chunk":
                chunk_ms = _ms(start)
                break
            if kind == "final":
                break
    finally:
        stream.cancel()
    return first, chunk_ms, first_kind


@contextmanager
def _channel_per_call(target: str, fresh: bool, shared: grpc.Channel) -> Iterator[grpc.Channel]:
    if not fresh:
        yield shared
        return
    with grpc.insecure_channel(target) as channel:
        yield channel


def reattach_finished(
    target: str, channel: grpc.Channel, job: JobRun, count: int
) -> dict[str, Any]:
    offset = job.total_bytes // 2
    rows: dict[str, Any] = {}
    for fresh in (False, True):
        firsts: list[float] = []
        chunks: list[float] = []
        for _ in range(count + 1):  # the first is a warm-up
            with _channel_per_call(target, fresh, channel) as use:
                first, chunk_ms, _ = watch_first_event(use, job.job_id, offset)
            firsts.append(first)
            chunks.append(chunk_ms)
        rows["new_connection" if fresh else "open_connection"] = _stats(
            firsts[1:], chunks[1:], offset
        )
    return rows


def reattach_running(target: str, channel: grpc.Channel, count: int) -> dict[str, Any]:
    """Re-attaches to running jobs (the same tiny request), submitting another whenever
    one finishes; only calls made while the job was running count. (More steps would run
    longer, but admission refuses a request whose estimate at the learned speed passes the
    model's max_request_s, and on a loaded machine the learned speed is low.)"""
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    submit = jobs_pb2.SubmitJobRequest(video=video_request())
    samples: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    jobs_run = 0
    job_id = ""
    deadline = time.monotonic() + 600
    while min(len(s) for s in samples.values()) < count and time.monotonic() < deadline:
        if not job_id:
            job_id = stub.Submit(submit, timeout=CALL_TIMEOUT_S).id
            jobs_run += 1
        for fresh in (False, True):
            before = stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=CALL_TIMEOUT_S)
            if before.state in FINISHED:
                job_id = ""
                break
            if before.state != RUNNING or not before.HasField("header"):
                time.sleep(0.02)  # not started, or not yet sent its header
                break
            offset = before.bytes_written
            with _channel_per_call(target, fresh, channel) as use:
                first, _, kind = watch_first_event(use, job_id, offset, to_chunk=False)
            after = stub.Get(jobs_pb2.GetJobRequest(id=job_id), timeout=CALL_TIMEOUT_S)
            if after.state == RUNNING and kind and len(samples[fresh]) < count:
                samples[fresh].append((first, offset))
            time.sleep(0.05)  # spread the re-attaches over the run
    if job_id:
        stub.Cancel(jobs_pb2.CancelJobRequest(id=job_id), timeout=CALL_TIMEOUT_S)
    rows: dict[str, Any] = {"jobs": jobs_run, "steps": STEPS}
    for fresh, taken in samples.items():
        if taken:
            firsts = [t for t, _ in taken]
            rows["new_connection" if fresh else "open_connection"] = {
                "count": len(firsts),
                "first_event_ms_median": _median(firsts),
                "first_event_ms_p90": _p90(firsts),
                "offsets": sorted({o for _, o in taken}),
            }
    return rows


def _stats(firsts: list[float], chunks: list[float], offset: int) -> dict[str, Any]:
    return {
        "count": len(firsts),
        "from_offset": offset,
        "first_event_ms_median": _median(firsts),
        "first_event_ms_p90": _p90(firsts),
        "first_chunk_ms_median": _median(chunks),
        "first_chunk_ms_p90": _p90(chunks),
    }


def run(repeats: int, reattaches: int) -> dict[str, Any]:
    with served_manifest(video_manifest()) as target, grpc.insecure_channel(target) as channel:
        row, jobs, direct = overhead(channel, repeats)
        finished = reattach_finished(target, channel, jobs[-1], reattaches)
        running = reattach_running(target, channel, reattaches)
    return {
        "overhead": row,
        "reattach_finished": finished,
        "reattach_running": running,
        "job_runs": [asdict(r) for r in jobs],
        "direct_runs": [asdict(r) for r in direct],
    }


def markdown(results: dict[str, Any]) -> str:
    o = results["overhead"]
    lines = [
        f"Jobs ({o['request']}; a server process with its SQLite job store; medians of "
        f"{o['repeats']} side-by-side runs; each job's watched bytes, download and final "
        f"sha256 agree: {o['job_bytes_consistent']}):",
        "",
        "| path | to the final event ms | / direct | outside the model ms |",
        "|---|---|---|---|",
        f"| direct Generate | {o['direct_final_ms']} | 1 | {o['direct_outside_model_ms']} |",
        f"| Submit + Watch | {o['job_final_ms']} | {o['job_over_direct']} "
        f"| {o['job_outside_model_ms']} |",
        f"| Submit + Watch + full Download | {o['job_download_ms']} "
        f"| {o['job_download_over_direct']} | {o['job_download_outside_model_ms']} |",
        "",
        "| re-attach: Watch(id, from_offset=N) | connection | count | first event ms p50 / p90 |",
        "|---|---|---|---|",
    ]
    for name, rows in (
        ("finished job", results["reattach_finished"]),
        ("running job", results["reattach_running"]),
    ):
        for connection in ("open_connection", "new_connection"):
            r = rows.get(connection)
            if r is None:
                continue
            lines.append(
                f"| {name} | {connection.replace('_', ' ')} | {r['count']} "
                f"| {r['first_event_ms_median']} / {r['first_event_ms_p90']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reattaches", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/job_overhead.json"))
    args = parser.parse_args()
    results = run(args.repeats, args.reattaches)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
