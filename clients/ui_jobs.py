"""The caller's jobs in the UI (genserve.v1.JobService through the SDK): a media request
run as a job from the chat, and the jobs view listing them with their state and progress,
each finished one with its player (or its mesh's preview) and a download.

A job that has not finished is shown by a fragment that polls it (Get, or List for the
view) every JOB_POLL_S; when everything shown has finished, the page reruns once and the
cards stand still. Finished jobs and their files are kept in the session: a rerun asks the
server only about what may still change.
"""

from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

import grpc
import streamlit as st

from genserve.contract import ModalitySpec

from .errors import GenServeError
from .job_info import JobInfo, JobState, job_spec
from .sync_client import GenServe
from .ui_media import show_file

JOB_POLL_S = 1.0
JOBS_SHOWN = 10  # the newest jobs the view lists, unless the reader asks for more
MAX_JOBS_SHOWN = 100
# Streamlit's Material icons: the browser needs no emoji font.
STATE_ICONS = {
    JobState.QUEUED: ":material/schedule:",
    JobState.RUNNING: ":material/progress_activity:",
    JobState.SUCCEEDED: ":material/check_circle:",
    JobState.FAILED: ":material/error:",
    JobState.CANCELLED: ":material/cancel:",
    JobState.EXPIRED: ":material/timer_off:",
}


def runs_as_job(spec: ModalitySpec[Any, Any]) -> bool:
    try:
        job_spec(spec)
    except TypeError:
        return False
    return True


def submit(gs: GenServe, spec: ModalitySpec[Any, Any], fields: dict[str, Any]) -> JobInfo:
    """Queues the request as a job; returns at once. May raise GenServeError."""
    info = gs.submit(spec, **fields).info
    _known()[info.id] = info
    return info


def error_text(error: GenServeError) -> str:
    return f"{error.code.name}: {error.message} (request ID {error.request_id})"


# -- one job (a chat reply) ----------------------------------------------------------------


def job_reply(gs: GenServe, job_id: str, key: str) -> None:
    """A job submitted from the chat: live until it has finished, then its file."""
    info = _known().get(job_id)
    with st.container(key=f"jobcard-chat-{job_id}"):
        if job_id in _gone():
            st.error(f"job {job_id}: {_gone()[job_id]}")
        elif info is not None and info.finished:
            card(gs, info, key)
        else:
            _live_job(gs, job_id, key)


@st.fragment(run_every=JOB_POLL_S)
def _live_job(gs: GenServe, job_id: str, key: str) -> None:
    try:
        info = gs.job(job_id).info
    except GenServeError as error:
        if error.code is grpc.StatusCode.NOT_FOUND:  # deleted (or expired): stop polling
            _gone()[job_id] = error_text(error)
            st.rerun()
        st.error(f"job {job_id}: {error_text(error)}")  # UNAVAILABLE, say: polled again
        return
    _known()[job_id] = info
    card(gs, info, key)
    if info.finished:
        st.rerun()  # the whole page once: this card stops polling


# -- the view ------------------------------------------------------------------------------


def jobs_view(gs: GenServe) -> None:
    """The caller's newest jobs; polled while any of them has not finished."""
    st.subheader("Jobs")
    shown = int(
        st.number_input(
            "Newest jobs shown", 1, MAX_JOBS_SHOWN, JOBS_SHOWN, key="jobs_shown", width=200
        )
    )
    infos = _list(gs, shown)
    if infos is None:
        return
    if not infos:
        st.info("No jobs yet: turn on “Run as a job” for a media modality and ask.")
        return
    if all(info.finished for info in infos):
        _cards(gs, infos)
    else:
        _live_view(gs, shown)


@st.fragment(run_every=JOB_POLL_S)
def _live_view(gs: GenServe, shown: int) -> None:
    infos = _list(gs, shown)
    if infos is None:
        return
    _cards(gs, infos)
    if all(info.finished for info in infos):
        st.rerun()


def _list(gs: GenServe, shown: int) -> list[JobInfo] | None:
    """The caller's newest jobs (List, newest first, as many pages as it takes)."""
    try:
        infos = [job.info for job in islice(gs.jobs(page_size=shown), shown)]
    except GenServeError as error:
        st.error(f"List: {error_text(error)}")
        return None
    _known().update({info.id: info for info in infos})
    return infos


def _cards(gs: GenServe, infos: list[JobInfo]) -> None:
    for info in infos:
        with st.container(border=True, key=f"jobcard-view-{info.id}"):
            card(gs, info, f"jobs.{info.id}", actions=True)


# -- a card --------------------------------------------------------------------------------


def card(gs: GenServe, info: JobInfo, key: str, actions: bool = False) -> None:
    """One job: what it is, its state and progress, its error or its file."""
    icon = STATE_ICONS.get(info.state, ":material/help:")
    st.markdown(f"{icon} **{info.modality}** job `{info.id}` · {info.model} · {info.state.value}")
    st.caption(f"request ID {info.request_id} · seed {info.seed}")
    if info.state is JobState.QUEUED:
        ahead = f", position {info.queue_position}" if info.queue_position else ""
        st.progress(0.0, text=f"queued{ahead}")
    elif info.state is JobState.RUNNING:
        step = info.progress
        done = step.step / max(step.total_steps, 1) if step else 0.0
        text = f"{step.stage} {step.step}/{step.total_steps}" if step else "starting"
        st.progress(min(done, 1.0), text=text)
    elif info.error is not None and info.state is not JobState.SUCCEEDED:
        st.error(f"{info.error.code}: {info.error.message} (request ID {info.request_id})")
    elif info.state is JobState.SUCCEEDED and info.header is not None:
        data = _artifact(gs, info)
        if data is not None:
            show_file(data, info.header.file_name, info.header.mime_type, key)
    if actions:
        _actions(gs, info, key)


def _actions(gs: GenServe, info: JobInfo, key: str) -> None:
    left, right = st.columns(2)
    if not info.finished and left.button("Cancel", key=f"{key}.cancel"):
        _try(lambda: gs.job(info.id).cancel())
    if right.button("Delete", key=f"{key}.delete") and _try(lambda: gs.job(info.id).delete()):
        _known().pop(info.id, None)
        _artifacts().pop(info.id, None)
        st.rerun()


def _try(call: Any) -> bool:
    try:
        call()
    except GenServeError as error:
        st.error(error_text(error))
        return False
    return True


def _artifact(gs: GenServe, info: JobInfo) -> bytes | None:
    """The finished job's file, fetched once (Download, the sha256 checked) and kept."""
    kept = _artifacts()
    if info.id not in kept:
        try:
            with tempfile.TemporaryDirectory(prefix="genserve-ui-") as folder:
                path = gs.job(info.id).download(Path(folder), resume=False)
                kept[info.id] = path.read_bytes()
        except GenServeError as error:
            st.error(f"Download: {error_text(error)}")
            return None
    data: bytes = kept[info.id]
    return data


def _known() -> dict[str, JobInfo]:
    known: dict[str, JobInfo] = st.session_state.setdefault("jobs", {})
    return known


def _gone() -> dict[str, str]:
    """Jobs the server no longer has (deleted): their NOT_FOUND error, shown as it is."""
    gone: dict[str, str] = st.session_state.setdefault("jobs_gone", {})
    return gone


def _artifacts() -> dict[str, bytes]:
    kept: dict[str, bytes] = st.session_state.setdefault("artifacts", {})
    return kept
