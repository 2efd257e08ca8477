"""The chat UI: `streamlit run clients/ui.py`.

Talks to the gRPC server through the SDK, not the bridge: one hop fewer, typed errors
with request IDs, and progress events for the media modalities. The modalities are the
contract's specs; the models, their states and the limits come from ListModels; the
sidebar's form is the chosen spec's request fields, bounded by those limits. The history
keeps both sides of the conversation, and a text turn sends the conversation so far (with
the form's system prompt). A media request may run as a job (JobService); the Jobs view
lists the caller's jobs with their progress and a player for each finished file.

Run as a script by Streamlit, so its imports are absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
from pydantic_settings import BaseSettings, SettingsConfigDict

from genserve.client.errors import GenServeError
from genserve.client.results import Catalog
from genserve.client.sync_client import GenServe
from genserve.client.ui_chat import Message, MissingUpload, answer, render, request_fields
from genserve.client.ui_form import render_form, upload_widget
from genserve.client.ui_jobs import error_text, jobs_view, runs_as_job, submit
from genserve.contract import SPECS, ModalitySpec, spec_for


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVE_UI_")

    target: str = "localhost:50051"
    api_key: str | None = None  # GENSERVE_UI_API_KEY, for a server with keys
    root_certificates: Path | None = None  # GENSERVE_UI_ROOT_CERTIFICATES: TLS to the server


@st.cache_resource
def client(target: str, api_key: str | None, root_certificates: Path | None) -> GenServe:
    roots = root_certificates.read_bytes() if root_certificates is not None else None
    return GenServe(target, api_key=api_key, root_certificates=roots)


def fetch_catalog(gs: GenServe) -> Catalog | None:
    try:
        return gs.catalog()
    except GenServeError as error:
        st.sidebar.error(f"ListModels: {error.code.name}: {error.message}")
        return None


def limits_of(spec: ModalitySpec[Any, Any], catalog: Catalog | None) -> Any:
    """The limits the server enforces (its published ones), else the defaults."""
    published = catalog.limits.get(spec.name, {}) if catalog else {}
    return spec.limits_type.model_validate(published)


def choose_model(spec: ModalitySpec[Any, Any], catalog: Catalog | None) -> str | None:
    """A model of the spec's by name, each shown with its state; None: the default."""
    models = {m.name: m for m in catalog.models if m.modality == spec.name} if catalog else {}
    default = next((m for m in models.values() if m.is_default), None)

    def label(name: str | None) -> str:
        if name is None:
            return f"default ({default.name}, {default.state})" if default else "default"
        return f"{name} ({models[name].state})"

    options: list[str | None] = [None, *models]
    chosen: str | None = st.sidebar.selectbox(
        "Model", options, format_func=label, key=f"{spec.name}.model"
    )
    return chosen


VIEWS = ("Chat", "Jobs")


def sidebar(catalog: Catalog | None) -> tuple[ModalitySpec[Any, Any], dict[str, Any], bytes | None]:
    """The chosen spec, its form's fields (and model), and its upload if it takes one."""
    names = [spec.name for spec in SPECS]
    spec = spec_for(st.sidebar.selectbox("Modality", names, key="modality"))
    st.sidebar.caption(spec.description)
    model = choose_model(spec, catalog)
    limits = limits_of(spec, catalog)
    with st.sidebar:
        upload = upload_widget(spec, limits)
        with st.expander("Parameters", expanded=True):
            fields = render_form(spec, limits)
    return spec, fields | ({"model": model} if model else {}), upload


def as_job(spec: ModalitySpec[Any, Any]) -> bool:
    """The sidebar's "Run as a job" switch, for the modalities that run as jobs."""
    if not runs_as_job(spec):
        return False
    help_text = "queue it on the server (JobService): it runs even if this page goes away"
    return bool(st.sidebar.toggle("Run as a job", key="as_job", help=help_text))


def ask(
    gs: GenServe,
    spec: ModalitySpec[Any, Any],
    fields: dict[str, Any],
    job: bool,
) -> tuple[Message, bool]:
    """One turn's reply, and whether it is already on screen (streamed text)."""
    try:
        if job:
            info = submit(gs, spec, fields)
            return Message("assistant", "job", info.id, modality=spec.name), False
        reply = answer(gs, spec, fields)
        return reply, reply.kind == "text"
    except GenServeError as error:
        return Message("assistant", "error", error_text(error), modality=spec.name), False


def chat(
    gs: GenServe, spec: ModalitySpec[Any, Any], form: dict[str, Any], upload: bytes | None
) -> None:
    job = as_job(spec)
    history: list[Message] = st.session_state.setdefault("history", [])
    for index, message in enumerate(history):
        render(message, gs, f"chat.{index}")
    prompt = st.chat_input("Ask, or describe what to make")
    if not prompt:
        return
    user = Message("user", "text", prompt, modality=spec.name)
    render(user, gs, f"chat.{len(history)}")
    try:
        reply, streamed = ask(gs, spec, request_fields(spec, prompt, history, upload, form), job)
    except MissingUpload as error:
        reply, streamed = Message("assistant", "error", str(error), modality=spec.name), False
    history += [user, reply]
    if not streamed:
        render(reply, gs, f"chat.{len(history) - 1}")


def main() -> None:
    settings = UISettings()
    st.title("genserve")
    gs = client(settings.target, settings.api_key, settings.root_certificates)
    view = st.sidebar.radio("View", VIEWS, key="view", horizontal=True)
    spec, form, upload = sidebar(fetch_catalog(gs))
    if view == "Jobs":
        jobs_view(gs)
    else:
        chat(gs, spec, form, upload)


main()
