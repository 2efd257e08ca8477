"""The UI's chat: the history's messages, how each is shown, and how one turn is asked
and answered, by the spec's kind of call (no per-modality code).

Media replies show by their MIME type (ui_media: image, audio, video players; a mesh as
its rendered preview and a download; anything else, or a spec marked `attachment`, as a
download). Text streams (deltas, transcript segments, any other piece's text) stream into
the reply, which keeps their text joined by the spec's `join`. A media request may run as
a job instead (ui_jobs): the reply is the job, live until its file is there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import streamlit as st

from genserve.contract import ModalitySpec

from .calls import Kind, kind_of
from .channel import new_request_id
from .folds import joined_increments, piece_text
from .sync_client import GenServe
from .ui_form import chat_field, conversation_field
from .ui_jobs import job_reply
from .ui_media import show_file

# A text stream's piece -> its text (None: a piece without any), by the kind of call.
PIECE_TEXT: dict[Kind, Callable[[Any], str | None]] = {
    Kind.TEXT: lambda delta: delta,
    Kind.TRANSCRIPT: lambda segment: segment.text,
    Kind.PIECES: lambda piece: piece_text(piece) if "text" in piece else None,
}


@dataclass
class Message:
    role: str  # "user" or "assistant"
    kind: str  # "text", "media", "data" (a unary reply, as JSON), "job" or "error"
    content: Any  # the text, the file's bytes, the reply's fields, or the job's id
    file_name: str = ""
    mime_type: str = ""
    modality: str = ""  # the spec it was asked of or made by
    request_id: str = ""
    attachment: bool = False  # offered as a download, not shown inline


class MissingUpload(ValueError):
    pass


def render(message: Message, gs: GenServe, key: str) -> None:
    """The message in a chat bubble; `key` keeps its widgets apart from other messages'."""
    with st.chat_message(message.role):
        show(message, gs, key)
        if message.request_id:
            st.caption(f"{message.modality} · request ID {message.request_id}")


def show(message: Message, gs: GenServe, key: str) -> None:
    if message.kind == "error":
        st.error(message.content)
    elif message.kind == "text":
        st.markdown(message.content)
    elif message.kind == "data":
        st.json(message.content, expanded=1)  # its fields; long lists folded
    elif message.kind == "job":
        job_reply(gs, message.content, key)
    else:
        show_file(message.content, message.file_name, message.mime_type, key, message.attachment)


def conversation(history: list[Message], spec: ModalitySpec[Any, Any]) -> list[dict[str, str]]:
    """The spec's earlier text turns, oldest first; a question that failed is left out."""
    turns: list[dict[str, str]] = []
    for message in history:
        if message.modality != spec.name:
            continue
        if message.kind == "error":
            if turns and turns[-1]["role"] == "user":
                turns.pop()
        elif message.kind == "text" and str(message.content).strip():
            # An empty reply is no turn: the server refuses a blank message's content.
            turns.append({"role": message.role, "content": message.content})
    return turns


def request_fields(
    spec: ModalitySpec[Any, Any],
    prompt: str,
    history: list[Message],
    upload: bytes | None,
    form: dict[str, Any],
) -> dict[str, Any]:
    """One turn's request: the form's fields, the prompt, the conversation, the upload."""
    fields = dict(form)
    chat = chat_field(spec)
    if chat is not None:
        is_list = spec.request_descriptor.fields_by_name[chat].is_repeated
        fields[chat] = [prompt] if is_list else prompt
    turns = conversation_field(spec)
    if turns is not None:
        fields[turns] = conversation(history, spec)
    if spec.upload is not None:
        if upload is None:
            raise MissingUpload(f"upload the {spec.upload.field} first ({spec.upload.description})")
        fields[spec.upload.field] = upload
    return fields


def answer(gs: GenServe, spec: ModalitySpec[Any, Any], fields: dict[str, Any]) -> Message:
    """Asks the server; streams text into the reply as it comes. May raise GenServeError."""
    request_id = new_request_id()
    calls = gs.calls(spec).with_options(request_id=request_id)
    reply = Message("assistant", "text", "", modality=spec.name, request_id=request_id)
    kind = kind_of(spec)
    if kind is Kind.UNARY:
        reply.kind, reply.content = "data", calls.create(**fields)
        return reply
    text_of = PIECE_TEXT.get(kind)
    if text_of is not None:
        texts: list[str] = []

        def streamed() -> Iterator[str]:
            for piece in calls.stream(**fields):
                text = text_of(piece)
                if text is not None:
                    texts.append(text)
                    yield text

        with st.chat_message("assistant"):
            st.write_stream(joined_increments(spec.join, streamed()))
            st.caption(f"{spec.name} · request ID {request_id}")
        reply.content = spec.join(texts)
        return reply
    progress = st.progress(0.0, text=f"{spec.name}: waiting")

    def on_progress(step: Any) -> None:
        done = step.step / max(step.total_steps, 1)
        progress.progress(done, text=f"{step.stage} {step.step}/{step.total_steps}")

    result = calls.with_options(on_progress=on_progress).generate(**fields)
    progress.empty()
    reply.kind, reply.content = "media", result.data
    reply.file_name, reply.mime_type = result.header.file_name, result.header.mime_type
    reply.attachment = spec.attachment
    return reply
