"""The Streamlit UI with Streamlit's AppTest, against a real running server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from streamlit.testing.v1 import AppTest

from genserve.client.ui import Message
from tests.server_thread import REPO_ROOT, ServerThread

UI_SCRIPT = str(REPO_ROOT / "clients" / "ui.py")
APP_TIMEOUT_S = 120


@pytest.fixture
def app(tiny_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setenv("GENSERVE_UI_TARGET", f"localhost:{tiny_server.port}")
    at = AppTest.from_file(UI_SCRIPT, default_timeout=APP_TIMEOUT_S)
    at.run()
    assert not at.exception
    yield at


def ask(at: AppTest, modality: str, prompt: str) -> None:
    at.sidebar.selectbox[0].set_value(modality)
    at.chat_input[0].set_value(prompt).run()
    assert not at.exception, at.exception


def test_text_is_streamed_into_the_reply_and_history_keeps_both_sides(app: AppTest) -> None:
    app.sidebar.number_input[0].set_value(6)
    ask(app, "text", "What is FastAPI?")
    ask(app, "text", "And Flask?")
    roles = [m.name for m in app.chat_message]
    assert roles == ["user", "assistant", "user", "assistant"]
    # the user's prompts are shown as text (the seed replayed them through st.image)
    assert app.chat_message[0].markdown[0].value == "What is FastAPI?"
    assert app.chat_message[1].markdown[0].value.strip()  # the assistant's reply is kept


def test_image_audio_and_3d_render(app: AppTest) -> None:
    ask(app, "image", "a cozy living room")
    assert app.chat_message[-1].get("image")
    ask(app, "audio", "Hello")
    assert app.chat_message[-1].get("audio")
    ask(app, "3d", "a chair")
    buttons = app.chat_message[-1].get("download_button")
    assert buttons and "mesh-" in buttons[0].proto.label
    assert len(app.chat_message) == 6  # history kept across modalities


def test_video_without_an_upload_says_so(app: AppTest) -> None:
    ask(app, "video", "make it move")
    assert "upload an image" in app.chat_message[-1].error[0].value


def test_a_video_reply_renders_a_player(app: AppTest, tiny_server: ServerThread) -> None:
    # AppTest cannot drive a file upload: the reply comes from the SDK and is replayed
    from genserve.client import GenServe
    from tests.media_calls import png_bytes

    with GenServe(f"localhost:{tiny_server.port}") as gs:
        result = gs.video.generate(png_bytes(), num_frames=2, steps=1)
    app.session_state["history"] = [
        Message("assistant", "video", result.data, result.header.file_name, result.header.mime_type)
    ]
    app.run()
    assert app.chat_message[0].get("video")


def test_server_errors_show_with_the_request_id(app: AppTest) -> None:
    ask(app, "image", "x" * 3000)  # over the server's prompt limit
    error = app.chat_message[-1].error[0].value
    assert "INVALID_ARGUMENT" in error and "request ID" in error
