"""The bridge's job routes (/v1/jobs) and OpenAI's Videos API (/v1/videos), end to end:
the real tiny server (its JobService storing under the session's data dir) behind the real
bridge; files parsed back (PNG with Pillow, MP4 with PyAV), ranges checked byte for byte,
also with the real curl binary."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from PIL import Image

from tests.bridge_thread import BridgeThread
from tests.media_calls import png_bytes

JOB_TIMEOUT_S = 180
IMAGE_PARAMS = {"prompt": "a lighthouse", "width": 128, "height": 128, "num_inference_steps": 2}
VIDEO_FIELDS = {"size": "64x64", "seconds": "0.3", "num_inference_steps": "1"}  # 3 frames at 7 fps


@dataclass(frozen=True)
class Finished:
    job: dict[str, Any]
    data: bytes

    @property
    def id(self) -> str:
        return str(self.job["id"])

    @property
    def size(self) -> int:
        return len(self.data)


def wait_for(http: httpx.Client, path: str, done: set[str], key: str = "state") -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        response = http.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body[key] in done:
            return body
        assert time.monotonic() < deadline, f"{path} still {body[key]}"
        time.sleep(0.2)


def submit(http: httpx.Client, modality: str, params: dict[str, Any], **extra: Any) -> Any:
    return http.post("/v1/jobs", json={"modality": modality, "params": params, **extra})


def assert_error(response: httpx.Response, status: int, *named: str) -> dict[str, Any]:
    """The /v1 error shape, with the request's id; the message names what is wrong."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    for name in named:
        assert name in error["message"], error
    return error


@pytest.fixture(scope="module")
def image_job(http: httpx.Client) -> Finished:
    response = submit(http, "text-to-image", IMAGE_PARAMS)  # an alias names the modality
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["modality"] == "image" and job["state"] in {"queued", "running"}
    assert job["final"] is None and job["request_id"] == response.headers["x-request-id"]
    job = wait_for(http, f"/v1/jobs/{job['id']}", {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    whole = http.get(f"/v1/jobs/{job['id']}/content")
    assert whole.status_code == 200
    return Finished(job, whole.content)


def test_image_job_succeeds_and_its_content_is_the_final_file(
    http: httpx.Client, image_job: Finished
) -> None:
    job, data = image_job.job, image_job.data
    final = job["final"]
    assert hashlib.sha256(data).hexdigest() == final["sha256"]
    assert int(final["total_bytes"]) == len(data) == int(job["bytes_written"])
    assert job["header"]["mime_type"] == "image/png" and job["progress"]["total_steps"] >= 1
    assert job["seed"] == final["seed"] and job["attempts"] == 1
    assert job["finished_at"] >= job["started_at"] >= job["created_at"] > 0
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG" and picture.size == (128, 128)
    head = http.get(f"/v1/jobs/{image_job.id}/content").headers
    assert head["etag"] == f'"{final["sha256"]}"' and head["accept-ranges"] == "bytes"
    assert head["content-type"] == "image/png" and head["content-length"] == str(len(data))


@pytest.mark.parametrize(
    ("asked", "first", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=1000-2999", 1000, 3000), ("bytes=-500", -500, None)],
    ids=["first-bytes", "middle", "suffix"],
)
def test_a_byte_range_is_206_with_exactly_those_bytes(
    http: httpx.Client, image_job: Finished, asked: str, first: int, stop: int | None
) -> None:
    response = http.get(f"/v1/jobs/{image_job.id}/content", headers={"Range": asked})
    assert response.status_code == 206
    expected = image_job.data[first:stop]
    start = first % image_job.size
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))
    last = start + len(expected) - 1
    assert response.headers["content-range"] == f"bytes {start}-{last}/{image_job.size}"


def test_ranges_past_the_end_to_the_end_and_if_range(
    http: httpx.Client, image_job: Finished
) -> None:
    path, size = f"/v1/jobs/{image_job.id}/content", image_job.size
    past = http.get(path, headers={"Range": f"bytes={size}-"})
    assert_error(past, 416, "range")
    assert past.headers["content-range"] == f"bytes */{size}"
    tail = http.get(path, headers={"Range": f"bytes={size - 10}-{size + 1000}"})
    assert tail.status_code == 206 and tail.content == image_job.data[-10:]
    longer = http.get(path, headers={"Range": f"bytes=-{size * 2}"})  # a suffix past the start
    assert longer.status_code == 206 and longer.content == image_job.data
    etag = f'"{image_job.job["final"]["sha256"]}"'
    same = http.get(path, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == image_job.data[:10]
    changed = http.get(path, headers={"Range": "bytes=0-9", "If-Range": '"another"'})
    assert changed.status_code == 200 and changed.content == image_job.data
    several = http.get(path, headers={"Range": "bytes=0-1,5-6"})  # ignored: the whole file
    assert several.status_code == 200 and several.content == image_job.data


@pytest.fixture(scope="module")
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("no curl binary")
    return found


def test_curl_reads_a_range_and_resumes_a_cut_download(
    curl: str, bridge: BridgeThread, image_job: Finished, tmp_path: Path
) -> None:
    url = f"{bridge.url}/v1/jobs/{image_job.id}/content"
    ranged = subprocess.run(
        [curl, "-sSf", "-r", "100-199", url], capture_output=True, check=True, timeout=60
    )
    assert ranged.stdout == image_job.data[100:200]
    # A download cut a third of the way, then resumed from what is on disk (-C -).
    target = tmp_path / "picture.png"
    cut = image_job.size // 3
    subprocess.run(
        [curl, "-sSf", "-r", f"0-{cut - 1}", "-o", str(target), url], check=True, timeout=60
    )
    assert target.stat().st_size == cut
    resumed = subprocess.run(
        [curl, "-sSf", "-C", "-", "-o", str(target), "-w", "%{http_code}", url],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    )
    assert resumed.stdout == "206"
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert digest == image_job.job["final"]["sha256"]


@dataclass(frozen=True)
class Sse:
    event: str
    id: str | None
    data: dict[str, Any]


def read_sse(response: httpx.Response) -> Iterator[Sse]:
    """Server-Sent Events, as the HTML standard frames them (comments skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in fields:
                yield Sse(
                    fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def job_events(http: httpx.Client, job_id: str, **headers: str) -> list[Sse]:
    path = f"/v1/jobs/{job_id}/events?data=1"
    with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(read_sse(response))


def chunk_bytes(events: list[Sse]) -> bytes:
    return b"".join(base64.b64decode(e.data["data_b64"]) for e in events if e.event == "chunk")


def test_events_resume_from_last_event_id_with_exactly_the_rest(
    http: httpx.Client, image_job: Finished
) -> None:
    events = job_events(http, image_job.id)
    kinds = [e.event for e in events]
    assert kinds[0] == "header" and kinds[-1] == "final" and "chunk" in kinds
    assert chunk_bytes(events) == image_job.data
    chunks = [e for e in events if e.event == "chunk"]
    assert len(chunks) >= 3
    for event in chunks:  # the id is the offset reached
        assert int(event.id or -1) == event.data["offset"] + event.data["size"]
    assert events[-1].id == str(image_job.size)
    assert events[-1].data["sha256"] == image_job.job["final"]["sha256"]
    # The client dropped after the second chunk: it reconnects with the last id it saw.
    last_seen = chunks[1].id or ""
    rest = job_events(http, image_job.id, **{"Last-Event-ID": last_seen})
    assert rest[0].event == "header"
    rest_chunks = [e for e in rest if e.event == "chunk"]
    assert rest_chunks[0].data["offset"] == int(last_seen)
    assert chunk_bytes(rest) == image_job.data[int(last_seen) :]
    assert rest[-1].event == "final"
    # From the end: the header and the final, no bytes; past it, 416.
    at_end = job_events(http, image_job.id, **{"Last-Event-ID": str(image_job.size)})
    assert at_end[0].event == "header" and at_end[-1].event == "final"
    assert not chunk_bytes(at_end)
    past = http.get(f"/v1/jobs/{image_job.id}/events", headers={"Last-Event-ID": "99999999"})
    assert_error(past, 416, "past the end")
    # Without ?data=1 a chunk says where it is, not what it holds.
    with http.stream("GET", f"/v1/jobs/{image_job.id}/events") as response:
        plain = [e for e in read_sse(response) if e.event == "chunk"]
    assert set(plain[0].data) == {"offset", "size"}


def test_list_cancel_idempotency_and_delete(http: httpx.Client, image_job: Finished) -> None:
    first = submit(http, "image", IMAGE_PARAMS, idempotency_key="one-lighthouse")
    again = submit(http, "image", {**IMAGE_PARAMS, "seed": 3}, idempotency_key="one-lighthouse")
    assert first.status_code == 202 and again.status_code == 200
    job_id = first.json()["id"]
    assert again.json()["id"] == job_id
    listed = http.get("/v1/jobs", params={"page_size": 1})
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["jobs"]] == [job_id]  # newest first
    token = listed.json()["next_page_token"]
    assert token
    older = http.get("/v1/jobs", params={"page_size": 500, "page_token": token}).json()
    assert image_job.id in [j["id"] for j in older["jobs"]]
    done = http.get("/v1/jobs", params={"state": "succeeded", "page_size": 500}).json()
    assert {j["state"] for j in done["jobs"]} == {"succeeded"}
    assert_error(http.get("/v1/jobs", params={"state": "sleeping"}), 422, "state")
    # Cancelling a finished job leaves it as it was.
    unchanged = http.post(f"/v1/jobs/{image_job.id}/cancel")
    assert unchanged.status_code == 200 and unchanged.json()["state"] == "succeeded"
    cancelled = http.post(f"/v1/jobs/{job_id}/cancel").json()
    if cancelled["state"] == "cancelled":  # unless it finished first
        assert_error(http.get(f"/v1/jobs/{job_id}/content"), 409, "cancelled")
        events = job_events(http, job_id)
        assert events[-1].event == "error" and events[-1].data["code"] == "CANCELLED"
    deleted = http.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": job_id, "deleted": True}
    assert_error(http.get(f"/v1/jobs/{job_id}"), 404, job_id)


def test_an_unfinished_job_streams_as_written_and_refuses_a_range(http: httpx.Client) -> None:
    params = {"image": base64.b64encode(png_bytes()).decode(), "num_frames": 4, "width": 64}
    response = submit(http, "video", {**params, "height": 64, "num_inference_steps": 3})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    ranged = http.get(f"/v1/jobs/{job_id}/content", headers={"Range": "bytes=0-9"})
    if ranged.status_code != 206:  # it may already be done on a fast machine
        assert_error(ranged, 409, "Range")
    whole = http.get(f"/v1/jobs/{job_id}/content")  # follows the file until it is whole
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    job = wait_for(http, f"/v1/jobs/{job_id}", {"succeeded", "failed"})
    assert hashlib.sha256(whole.content).hexdigest() == job["final"]["sha256"]
    with av.open(io.BytesIO(whole.content), mode="r") as container:
        assert len(list(container.decode(video=0))) == 4


def test_unknown_jobs_are_404_with_the_request_id(http: httpx.Client) -> None:
    for method, path in [
        ("GET", "/v1/jobs/no-such-job"),
        ("GET", "/v1/jobs/no-such-job/content"),
        ("GET", "/v1/jobs/no-such-job/events"),
        ("POST", "/v1/jobs/no-such-job/cancel"),
        ("DELETE", "/v1/jobs/no-such-job"),
        ("GET", "/v1/videos/no-such-job"),
    ]:
        error = assert_error(http.request(method, path), 404, "no-such-job")
        assert error["code"] == "not_found"


@pytest.mark.parametrize(
    ("modality", "params", "named"),
    [
        ("image", {**IMAGE_PARAMS, "width": 100}, "params.width"),
        ("image", {**IMAGE_PARAMS, "steps": 3}, "params.steps"),
        ("image", {"width": 64}, "params.prompt"),
        ("image", {**IMAGE_PARAMS, "width": "64"}, "width"),
        ("video", {"num_frames": 2}, "params.image"),
        ("video", {"image": "not base64!"}, "params.image"),
        ("text", {"prompt": "hi"}, "modality"),
        ("image", {**IMAGE_PARAMS, "model": "no-such-model"}, "no-such-model"),
    ],
    ids=["bound", "unknown", "missing", "type", "no-image", "bad-base64", "not-a-job", "model"],
)
def test_bad_params_are_4xx_naming_the_field(
    http: httpx.Client, modality: str, params: dict[str, Any], named: str
) -> None:
    response = submit(http, modality, params)
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code, named)


# -- OpenAI's Videos API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(http: httpx.Client) -> Finished:
    files = {"input_reference": ("frame.png", png_bytes(), "image/png")}
    fields = {"model": "sora-2", "prompt": "not used", **VIDEO_FIELDS}
    response = http.post("/v1/videos", data=fields, files=files)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "video" and created["status"] in {"queued", "in_progress"}
    assert created["progress"] in range(0, 100)
    done = wait_for(http, f"/v1/videos/{created['id']}", {"completed", "failed"}, "status")
    assert done["status"] == "completed", done
    content = http.get(f"/v1/videos/{created['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    return Finished(done, content.content)


def test_videos_create_retrieve_and_content_parse_as_mp4(
    http: httpx.Client, video: Finished
) -> None:
    assert video.job["progress"] == 100 and video.job["error"] is None
    assert video.job["size"] == "64x64" and video.job["model"]
    assert video.job["completed_at"] >= video.job["created_at"] > 0
    assert video.job["expires_at"] > video.job["completed_at"]
    with av.open(io.BytesIO(video.data), mode="r") as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 64)
        assert len(list(container.decode(video=0))) == 3  # ceil(0.3 s x 7 fps)
    # A <video> seeks with ranges: the end of the file, then from the middle on.
    path = f"/v1/videos/{video.id}/content"
    tail = http.get(path, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == video.data[-100:]
    middle = http.get(path, headers={"Range": f"bytes={video.size // 2}-"})
    assert middle.status_code == 206 and middle.content == video.data[video.size // 2 :]
    job = http.get(f"/v1/jobs/{video.id}").json()  # the same job on the jobs routes
    assert job["modality"] == "video" and job["header"]["num_frames"] == 3


def test_the_openai_sdk_reads_lists_and_deletes_videos(
    http: httpx.Client, bridge: BridgeThread, video: Finished
) -> None:
    client = openai.OpenAI(base_url=f"{bridge.url}/v1", api_key="unused", max_retries=0)
    retrieved = client.videos.retrieve(video.id)
    assert retrieved.status == "completed" and retrieved.progress == 100
    assert client.videos.download_content(video.id).read() == video.data
    # A second video, by JSON with a data: URL, so that the list has two.
    reference = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    second = http.post(
        "/v1/videos",
        json={
            "input_reference": {"image_url": reference},
            **VIDEO_FIELDS,
            "num_inference_steps": 1,
        },
    )
    assert second.status_code == 200, second.text
    second_id = second.json()["id"]
    first_page = client.videos.list(limit=1)
    assert [v.id for v in first_page.data] == [second_id] and first_page.has_more
    assert all(v.object == "video" for v in client.videos.list(limit=100).data)
    ids = [v.id for v in client.videos.list(limit=1)]  # iterating fetches the next pages
    assert ids[:2] == [second_id, video.id]
    listed = http.get("/v1/videos", params={"limit": 1, "after": second_id}).json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == video.id
    for video_id in (second_id, video.id):
        deleted = client.videos.delete(video_id)
        assert deleted.deleted and deleted.id == video_id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert_error(http.get(f"/v1/videos/{video.id}/content"), 404, video.id)


def test_videos_name_bad_fields(http: httpx.Client, image_job: Finished) -> None:
    files = {"input_reference": ("frame.png", png_bytes(), "image/png")}
    assert_error(http.post("/v1/videos", data={"size": "big"}, files=files), 422, "size")
    assert_error(http.post("/v1/videos", data={"seconds": "-1"}, files=files), 422, "seconds")
    assert_error(http.post("/v1/videos", data={"size": "64x60"}, files=files), 422, "height")
    assert_error(http.post("/v1/videos", json={"seconds": "4"}), 422, "input_reference")
    # An image job is not a video.
    assert_error(http.get(f"/v1/videos/{image_job.id}"), 404, image_job.id)
