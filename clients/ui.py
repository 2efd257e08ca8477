"""The seed's chat UI (its client.py), grown up: `streamlit run clients/ui.py`.

Talks to the gRPC server through the SDK, not the bridge: one hop fewer, typed errors
with request IDs, and progress events for the media modalities. The history keeps both
sides of the conversation, each message in the modality it was made in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from pydantic_settings import BaseSettings, SettingsConfigDict

from genserve.client.errors import GenServeError
from genserve.client.sync_client import GenServe

MODALITIES = ("text", "image", "audio", "video", "3d")


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVE_UI_")

    target: str = "localhost:50051"
    api_key: str | None = None  # GENSERVE_UI_API_KEY, for a server with keys
    root_certificates: Path | None = None  # GENSERVE_UI_ROOT_CERTIFICATES: TLS to the server


@dataclass
class Message:
    role: str  # "user" or "assistant"
    kind: str  # "text", "image", "audio", "video", "3d" or "error"
    content: Any  # the text, or the file's bytes
    file_name: str = ""
    mime_type: str = ""


@st.cache_resource
def client(target: str, api_key: str | None, root_certificates: Path | None) -> GenServe:
    roots = root_certificates.read_bytes() if root_certificates is not None else None
    return GenServe(target, api_key=api_key, root_certificates=roots)


def render(message: Message) -> None:
    with st.chat_message(message.role):
        if message.kind in ("text", "error"):
            (st.error if message.kind == "error" else st.markdown)(message.content)
        elif message.kind == "image":
            st.image(message.content, caption=message.file_name)
        elif message.kind == "audio":
            st.audio(message.content, format=message.mime_type)
        elif message.kind == "video":
            st.video(message.content, format=message.mime_type)
        else:  # 3D: offered as a download
            st.download_button(
                f"Download {message.file_name}",
                data=message.content,
                file_name=message.file_name,
                mime=message.mime_type,
            )


def answer(
    gs: GenServe, modality: str, prompt: str, source_image: bytes | None, max_new_tokens: int
) -> Message:
    if modality == "text":
        with st.chat_message("assistant"):
            text = st.write_stream(gs.text.stream(prompt, max_new_tokens=max_new_tokens))
        return Message("assistant", "text", text if isinstance(text, str) else "".join(text))
    progress = st.progress(0.0, text=f"{modality}: waiting")

    def on_progress(step: Any) -> None:
        progress.progress(
            step.step / max(step.total_steps, 1),
            text=f"{step.stage} {step.step}/{step.total_steps}",
        )

    if modality == "image":
        result = gs.image.generate(prompt, on_progress=on_progress)
    elif modality == "audio":
        result = gs.audio.generate(prompt, on_progress=on_progress)
    elif modality == "video":
        if source_image is None:
            raise ValueError("upload an image to animate first (sidebar)")
        result = gs.video.generate(source_image, on_progress=on_progress)
    else:
        result = gs.mesh.generate(prompt, on_progress=on_progress)
    progress.empty()
    return Message(
        "assistant", modality, result.data, result.header.file_name, result.header.mime_type
    )


def main() -> None:
    settings = UISettings()
    st.title("genserve")
    modality = st.sidebar.selectbox("Modality", MODALITIES)
    max_new_tokens = int(st.sidebar.number_input("Max new tokens", 1, 2048, 256))
    upload = st.sidebar.file_uploader(
        "Image to animate (video)", type=["png", "jpg", "jpeg", "webp"]
    )
    history: list[Message] = st.session_state.setdefault("history", [])
    for message in history:
        render(message)
    prompt = st.chat_input("Ask, or describe what to make")
    if not prompt:
        return
    user = Message("user", "text", prompt)
    history.append(user)
    render(user)
    try:
        source = upload.getvalue() if upload else None
        gs = client(settings.target, settings.api_key, settings.root_certificates)
        reply = answer(gs, modality, prompt, source, max_new_tokens)
    except GenServeError as error:
        reply = Message(
            "assistant",
            "error",
            f"{error.code.name}: {error.message} (request ID {error.request_id})",
        )
    except ValueError as error:
        reply = Message("assistant", "error", str(error))
    history.append(reply)
    if reply.kind != "text":  # streamed text is already on screen
        render(reply)


main()
