"""A media file on the page, by its MIME type: the image, audio and video players, a mesh
as its rendered preview, anything else (or a spec marked `attachment`) as a download. A
mesh is offered as a download too, beside its picture. Shared by the chat's replies and
the jobs' artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from .ui_mesh import MeshFileError, is_mesh, preview_png

PLAYERS: dict[str, Callable[..., Any]] = {"image": st.image, "audio": st.audio, "video": st.video}
PREVIEWS_CACHED = 32  # mesh previews kept (the page reruns on every click)
VIDEO_WIDTH = 480  # pixels: a tiny clip is not stretched over the whole column


@st.cache_data(max_entries=PREVIEWS_CACHED, show_spinner=False)
def mesh_preview(data: bytes, file_name: str) -> bytes:
    return preview_png(data, file_name)


def show_file(
    data: bytes, file_name: str, mime_type: str, key: str, attachment: bool = False
) -> None:
    """The file in the current container; `key` keeps its widgets apart from others'."""
    if is_mesh(mime_type, file_name):
        try:
            st.image(mesh_preview(data, file_name), caption=f"preview of {file_name}")
        except MeshFileError as error:
            st.warning(f"no preview of {file_name}: {error}")
        download(data, file_name, mime_type, key)
        return
    player = PLAYERS.get(mime_type.split("/")[0])
    if player is None or attachment:
        download(data, file_name, mime_type, key)
    elif player is st.image:
        st.image(data, caption=file_name)
    elif player is st.video:
        st.video(data, format=mime_type, width=VIDEO_WIDTH)
        st.caption(file_name)
    else:
        player(data, format=mime_type)
        st.caption(file_name)


def download(data: bytes, file_name: str, mime_type: str, key: str) -> None:
    st.download_button(
        f"Download {file_name}",
        data=data,
        file_name=file_name,
        mime=mime_type,
        key=f"{key}.download",
    )
