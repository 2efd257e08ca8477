"""The Streamlit UI with Streamlit's AppTest, against a real running server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from genserve.client import GenServe, calls, ui_chat, ui_mesh
from genserve.client.calls import Kind
from genserve.client.ui_chat import Message, conversation
from genserve.client.ui_form import form_fields, widget_key
from genserve.contract import SPECS, ModalitySpec
from genserve.contract.modalities.text import TEXT
from tests.fake_server import TEXT_PIECES, FakeServer
from tests.server_thread import REPO_ROOT, ServerThread

UI_SCRIPT = str(REPO_ROOT / "clients" / "ui.py")
APP_TIMEOUT_S = 120
every_spec = pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])


@pytest.fixture
def app(tiny_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    monkeypatch.setenv("GENSERVE_UI_TARGET", f"localhost:{tiny_server.port}")
    at = AppTest.from_file(UI_SCRIPT, default_timeout=APP_TIMEOUT_S)
    at.run()
    assert not at.exception
    yield at


def choose(at: AppTest, spec_name: str) -> None:
    at.selectbox(key="modality").set_value(spec_name).run()
    assert not at.exception, at.exception


def ask(at: AppTest, spec_name: str, prompt: str) -> None:
    choose(at, spec_name)
    at.chat_input[0].set_value(prompt).run()
    assert not at.exception, at.exception


def request_id(at: AppTest, index: int) -> str:
    return str(at.chat_message[index].caption[0].value.rsplit(" ", 1)[1])


def test_text_is_streamed_into_the_reply_and_history_keeps_both_sides(
    app: AppTest, tiny_server: ServerThread
) -> None:
    choose(app, "text")
    app.number_input(key="text.max_new_tokens").set_value(6)
    app.selectbox(key="text.do_sample").set_value(False)
    ask(app, "text", "What is FastAPI?")
    ask(app, "text", "And Flask?")
    roles = [m.name for m in app.chat_message]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert app.chat_message[0].markdown[0].value == "What is FastAPI?"
    assert app.chat_message[1].markdown[0].value.strip()  # the assistant's reply is kept
    # The second turn carried the first (question and answer) as messages.
    first = tiny_server.wait_for_usage_row(request_id(app, 1))
    second = tiny_server.wait_for_usage_row(request_id(app, 3))
    assert first["completion_tokens"] == 6
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"] // 2


def test_a_turn_sends_the_conversation_and_the_system_prompt_exactly(
    app: AppTest, tiny_server: ServerThread
) -> None:
    """The prompt tokens of the second turn are those of the history's exact messages
    under the form's system prompt, sent by the SDK; without the history, or under the
    default system prompt, they are not."""
    choose(app, "text")
    app.number_input(key="text.max_new_tokens").set_value(6)
    app.selectbox(key="text.do_sample").set_value(False)
    app.text_area(key="text.system_prompt").set_value("You are a terse assistant.")
    ask(app, "text", "Remember the number 42.")
    ask(app, "text", "Which number was it?")
    carried = tiny_server.wait_for_usage_row(request_id(app, 3))["prompt_tokens"]
    history = app.session_state["history"]
    turns = [{"role": m.role, "content": m.content} for m in history[:2]]
    with GenServe(f"localhost:{tiny_server.port}") as gs:

        def prompt_tokens(**fields: Any) -> int:
            return gs.text.generate(
                prompt="Which number was it?", max_new_tokens=1, do_sample=False, **fields
            ).prompt_tokens

        assert carried == prompt_tokens(messages=turns, system_prompt="You are a terse assistant.")
        assert carried != prompt_tokens(system_prompt="You are a terse assistant.")
        assert carried != prompt_tokens(messages=turns)  # the default system prompt


def test_the_conversation_leaves_out_other_modalities_and_failed_questions() -> None:
    def text(role: str, content: str, modality: str = "text") -> Message:
        return Message(role, "text", content, modality=modality)

    history = [
        text("user", "Hi"),
        text("assistant", "Hello"),
        text("user", "a red square", modality="image"),
        Message("assistant", "media", b"png", modality="image"),
        text("user", "x" * 10),
        Message("assistant", "error", "INVALID_ARGUMENT", modality="text"),
        text("user", "Bye"),
    ]
    assert conversation(history, TEXT) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]


@every_spec
def test_the_form_has_every_field_with_the_servers_bounds(
    app: AppTest, tiny_server: ServerThread, spec: ModalitySpec[Any, Any]
) -> None:
    with GenServe(f"localhost:{tiny_server.port}") as gs:
        limits = spec.limits_type.model_validate(gs.catalog().limits[spec.name])
    choose(app, spec.name)
    widgets = {w.key: w for w in app.sidebar if getattr(w, "key", None)}
    numbers = {w.key: w for w in app.sidebar.number_input}
    for name, info in form_fields(spec, limits).items():
        key = widget_key(spec, name)
        assert key in widgets, name
        for bound in info.metadata if key in numbers else ():
            limit: Any = getattr(bound, "le", getattr(bound, "ge", None))
            if isinstance(bound, annotated_types.Le):
                assert numbers[key].max == min(limit, 2**53 - 1), name
            if isinstance(bound, annotated_types.Ge):
                assert numbers[key].min == max(limit, -(2**53 - 1)), name
    if spec.upload is not None:
        assert widget_key(spec, "upload") in {u.key for u in app.get("file_uploader")}


def test_models_are_listed_with_their_state(app: AppTest) -> None:
    choose(app, "text")
    labels = app.selectbox(key="text.model").options
    assert labels[0].startswith("default (smollm2-135m-instruct, ")
    assert any(label.startswith("smollm2-135m-instruct-serial (") for label in labels)


def test_image_audio_and_mesh_render(app: AppTest) -> None:
    ask(app, "image", "a cozy living room")
    assert app.chat_message[-1].get("image")
    ask(app, "audio", "Hello")
    assert app.chat_message[-1].get("audio")
    ask(app, "mesh", "a chair")
    buttons = app.chat_message[-1].get("download_button")
    assert buttons and "mesh-" in buttons[0].proto.label
    assert app.chat_message[-1].get("image")  # the mesh's rendered preview
    assert len(app.chat_message) == 6  # history kept across modalities


def test_a_media_request_runs_as_a_job_and_the_jobs_view_shows_it(
    app: AppTest, tiny_server: ServerThread
) -> None:
    choose(app, "image")
    app.toggle(key="as_job").set_value(True)
    app.number_input(key="image.num_inference_steps").set_value(2)
    ask(app, "image", "a cozy living room")
    (reply,) = (m for m in app.session_state["history"] if m.role == "assistant")
    assert reply.kind == "job"
    with GenServe(f"localhost:{tiny_server.port}") as gs:
        info = gs.job(reply.content).wait(timeout=APP_TIMEOUT_S)
    assert info.header is not None and info.header.width == 64
    app.run()  # the job's card, now finished: its picture
    assert not app.exception, app.exception
    assert app.chat_message[-1].get("image")
    assert reply.content in app.chat_message[-1].markdown[0].value
    app.radio(key="view").set_value("Jobs").run()
    assert not app.exception, app.exception
    cards = [m.value for m in app.main.markdown if reply.content in m.value]
    assert cards and "succeeded" in cards[0]
    assert app.main.get("image") and not app.chat_input
    app.button(key=f"jobs.{reply.content}.delete").click().run()  # gone from the list
    assert not [m for m in app.main.markdown if reply.content in m.value]
    app.radio(key="view").set_value("Chat").run()  # the chat's card says so, with its code
    error = app.chat_message[-1].error[0].value
    assert reply.content in error and "NOT_FOUND" in error and "request ID" in error


def test_a_mesh_file_reads_back_and_renders(tmp_path: Path) -> None:
    """The preview reads the server's own OBJ and binary PLY writers' files (and ASCII
    PLY), and draws the mesh: a picture of the preview's size that is not blank."""
    from genserve.server.media.mesh_files import write_obj, write_ply

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], dtype=np.int64)
    files = {}
    for name, write in (("obj", write_obj), ("ply", write_ply)):
        out = io.BytesIO()
        write(out, vertices, colours, faces)
        files[name] = out.getvalue()
    files["ascii.ply"] = (
        b"ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
        b"property float z\nelement face 2\nproperty list uchar int vertex_indices\n"
        b"end_header\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n4 0 1 3 2\n"
    )
    for name, data in files.items():
        mesh = ui_mesh.read_mesh(data, f"mesh.{name}")
        assert np.allclose(mesh.vertices, vertices, atol=1e-5), name
        if name != "ascii.ply":
            assert (mesh.faces == faces).all(), name
            assert mesh.colours is not None and np.allclose(mesh.colours, colours, atol=0.01)
        else:
            assert len(mesh.faces) == 3 and mesh.colours is None  # a quad, fanned in two
        picture = Image.open(io.BytesIO(ui_mesh.preview_png(data, f"mesh.{name}")))
        assert picture.size == (ui_mesh.PREVIEW_SIZE, ui_mesh.PREVIEW_SIZE)
        assert len(set(picture.getdata())) > 10, name  # something drawn, shaded
    with pytest.raises(ui_mesh.MeshFileError):
        ui_mesh.preview_png(b"ply\nformat binary_little_endian 1.0\n", "broken.ply")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.upload], ids=lambda s: s.name)
def test_a_spec_that_takes_an_upload_asks_for_it(
    app: AppTest, spec: ModalitySpec[Any, Any]
) -> None:
    assert spec.upload is not None
    ask(app, spec.name, "go")
    assert f"upload the {spec.upload.field}" in app.chat_message[-1].error[0].value


def test_a_video_reply_renders_a_player(app: AppTest, tiny_server: ServerThread) -> None:
    # AppTest cannot drive a file upload: the reply comes from the SDK and is replayed
    from tests.media_calls import png_bytes

    with GenServe(f"localhost:{tiny_server.port}") as gs:
        result = gs.video.generate(png_bytes(), num_frames=2, num_inference_steps=1)
    header = result.header
    app.session_state["history"] = [
        Message("assistant", "media", result.data, header.file_name, header.mime_type, "video")
    ]
    app.run()
    assert app.chat_message[0].get("video")


def test_a_generic_text_stream_shows_its_joined_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text stream whose piece has no fold of its own (TEXT, forced): its pieces' text
    streams into the reply, and the history keeps it joined by the spec's rule."""
    real = calls.kind_of

    def kind(spec: ModalitySpec[Any, Any]) -> Kind:
        return Kind.PIECES if spec is TEXT else real(spec)

    monkeypatch.setattr(calls, "kind_of", kind)
    monkeypatch.setattr(ui_chat, "kind_of", kind)
    made: list[ModalitySpec[Any, Any]] = []
    pieces_calls = GenServe.pieces_calls

    def spied(gs: GenServe, spec: ModalitySpec[Any, Any]) -> Any:
        made.append(spec)
        return pieces_calls(gs, spec)

    monkeypatch.setattr(GenServe, "pieces_calls", spied)
    fake = FakeServer().start()
    try:
        monkeypatch.setenv("GENSERVE_UI_TARGET", fake.target)
        at = AppTest.from_file(UI_SCRIPT, default_timeout=APP_TIMEOUT_S)
        at.run()  # no ListModels on the stand-in: the sidebar says so, the form has defaults
        ask(at, "text", "Hi")
        assert [m.name for m in at.chat_message] == ["user", "assistant"]
        assert at.chat_message[1].markdown[0].value == TEXT.join(TEXT_PIECES)
        (reply,) = (m for m in at.session_state["history"] if m.role == "assistant")
        assert (reply.kind, reply.content) == ("text", TEXT.join(TEXT_PIECES))
        assert made == [TEXT] and fake.received[0].spec == "text"  # the generic path
    finally:
        fake.stop()


def test_server_errors_show_with_the_request_id(app: AppTest) -> None:
    ask(app, "image", "x" * 3000)  # over the server's prompt limit
    error = app.chat_message[-1].error[0].value
    assert "INVALID_ARGUMENT" in error and "request ID" in error
