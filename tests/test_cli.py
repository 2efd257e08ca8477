"""The `genserve` CLI: its flags for every spec (against the stand-in server), then as a
subprocess against a real server."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from PIL import Image

from genserve.client import calls, cli
from genserve.client.calls import Kind, kind_of
from genserve.client.cli_flags import GROUP_TITLE
from genserve.contract import SPECS, Interaction, ModalitySpec
from genserve.contract.modalities.text import TEXT
from genserve.contract.spec import message_to_fields
from tests.fake_server import TEXT_PIECES, FakeServer, every_field, every_final_field
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread

CLI_TIMEOUT_S = 180
every_spec = pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
TEXT_STREAMS = [s for s in SPECS if s.interaction is Interaction.TEXT_STREAM]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


# -- the flags, for every spec ----------------------------------------------------------


@every_spec
def test_the_flag_set_is_the_protos_fields(spec: ModalitySpec[Any, Any]) -> None:
    commands = subcommands()
    command = commands[spec.name]
    assert all(commands[alias] is command for alias in spec.aliases)
    (group,) = (g for g in command._action_groups if g.title == GROUP_TITLE)
    assert {a.dest for a in group._group_actions} == set(spec.request_fields)
    # ... and besides them only -h and, for media, -o and --detach (`model` is the
    # global --model).
    extra = {a.dest for a in command._actions} - set(spec.request_fields)
    assert extra == ({"help", "output", "detach"} if kind_of(spec) is Kind.MEDIA else {"help"})


def argv_for(spec: ModalitySpec[Any, Any], values: dict[str, Any], tmp_path: Path) -> list[str]:
    """A command line that sets every field to its value."""

    def text(field: FieldDescriptor, value: Any) -> str:
        if field.type == FieldDescriptor.TYPE_BYTES:
            path = tmp_path / field.name
            path.write_bytes(value)
            return str(path)
        return json.dumps(value) if isinstance(value, dict) else str(value)

    argv = ["--model", values["model"], spec.name]
    first, *rest = (f for f in spec.request_descriptor.fields if f.name != "model")
    argv += [
        text(first, v) for v in (values[first.name] if first.is_repeated else [values[first.name]])
    ]
    for field in rest:
        flag = "--" + field.name.replace("_", "-")
        value = values[field.name]
        if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            argv.append(flag if value else f"--no-{flag[2:]}")
            continue
        for item in value if field.is_repeated else [value]:
            argv += [flag, text(field, item)]
    if kind_of(spec) is Kind.MEDIA:
        argv += ["-o", str(tmp_path)]
    return argv


@every_spec
def test_every_flag_reaches_the_server(
    fake: FakeServer, spec: ModalitySpec[Any, Any], tmp_path: Path
) -> None:
    values = every_field(spec)
    assert cli.main(["--target", fake.target, *argv_for(spec, values, tmp_path)]) == 0
    (received,) = fake.received
    assert message_to_fields(received.request) == values


@every_spec
def test_json_output_for_every_spec(
    fake: FakeServer,
    spec: ModalitySpec[Any, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = argv_for(spec, every_field(spec), tmp_path)
    assert cli.main(["--target", fake.target, "--json", "--request-id", "cli-json", *argv]) == 0
    output = json.loads(capsys.readouterr().out)
    kind = kind_of(spec)
    if kind is Kind.MEDIA:
        assert Path(output["path"]).read_bytes() == b"first chunk, second chunk"
    if kind in (Kind.TEXT, Kind.TRANSCRIPT, Kind.PIECES):
        assert output["text"] and output["request_id"] == "cli-json"


def test_a_text_stream_with_a_new_piece_gets_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    caption = dataclasses.replace(TEXT, name="caption", aliases=("captions",), piece="caption")
    monkeypatch.setattr(cli, "SPECS", (*SPECS, caption))
    commands = subcommands()  # no KeyError building the parser
    assert commands["captions"] is commands["caption"]


def force_pieces(monkeypatch: pytest.MonkeyPatch, spec: ModalitySpec[Any, Any]) -> None:
    """The spec as if its piece had no fold of its own: the generic kind, everywhere."""
    real = calls.kind_of

    def kind(other: ModalitySpec[Any, Any]) -> Kind:
        return Kind.PIECES if other is spec else real(other)

    monkeypatch.setattr(calls, "kind_of", kind)
    monkeypatch.setattr(cli, "kind_of", kind)


@pytest.mark.parametrize("spec", TEXT_STREAMS, ids=[s.name for s in TEXT_STREAMS])
def test_a_generic_text_stream_prints_its_text_and_its_result(
    fake: FakeServer,
    spec: ModalitySpec[Any, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    force_pieces(monkeypatch, spec)
    argv = ["--target", fake.target, *argv_for(spec, every_field(spec), tmp_path)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == spec.join(TEXT_PIECES) + "\n"  # joined by its rule
    fake.final = every_final_field(spec)
    assert cli.main(["--json", "--request-id", "cli-pieces", *argv]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["text"] == spec.join(TEXT_PIECES) and output["request_id"] == "cli-pieces"
    assert [piece["text"] for piece in output["pieces"]] == list(TEXT_PIECES)
    assert output["final"] == fake.final


def test_segments_print_as_they_come(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = tmp_path / "speech.wav"
    audio.write_bytes(b"RIFF")
    assert cli.main(["--target", fake.target, "stt", str(audio)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("] ")[1] for line in lines] == ["Hello", "world"]


def test_a_missing_upload_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["video", str(tmp_path / "none.png")])
    assert exit_.value.code == 2 and "is not a file" in capsys.readouterr().err


# -- a real server, as a subprocess -----------------------------------------------------


def genserve(
    server: ServerThread | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    target = ["--target", f"localhost:{server.port}"] if server else ["--target", "localhost:1"]
    return subprocess.run(
        [sys.executable, "-m", "genserve.client.cli", *target, *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=cwd,
        check=False,
    )


def test_text_streams_to_stdout(tiny_server: ServerThread) -> None:
    result = genserve(
        tiny_server, "text", "What is FastAPI?", "--max-new-tokens", "8", "--no-do-sample"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_image_writes_a_file(tiny_server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "room.png"
    args = ("a cozy living room", "-o", str(out), "--num-inference-steps", "2")
    result = genserve(tiny_server, "image", *args)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    assert "saved" in result.stderr


def test_json_metadata(tiny_server: ServerThread, tmp_path: Path) -> None:
    args = ("a chair", "-o", str(tmp_path), "--num-inference-steps", "2")
    result = genserve(tiny_server, "--json", "3d", *args)
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)
    path = Path(metadata["path"])
    assert path.parent == tmp_path and path.suffix == ".obj"
    assert metadata["bytes"] == path.stat().st_size > 0
    assert metadata["header"]["face_count"] > 0


def test_audio_and_video(tiny_server: ServerThread, tmp_path: Path) -> None:
    audio = genserve(tiny_server, "audio", "Hello", "-o", str(tmp_path / "hello.wav"))
    assert audio.returncode == 0, audio.stderr
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
    source = tmp_path / "room.png"
    source.write_bytes(png_bytes())
    out = str(tmp_path / "room.mp4")
    args = ("-o", out, "--num-frames", "2", "--num-inference-steps", "1")
    video = genserve(tiny_server, "video", str(source), *args)
    assert video.returncode == 0, video.stderr
    assert (tmp_path / "room.mp4").read_bytes()[4:8] == b"ftyp"


def test_transcription(tiny_server: ServerThread, tmp_path: Path) -> None:
    from tests.speech import ESPEAK, ESPEAK_MISSING, SENTENCE, speak, word_error_rate

    assert ESPEAK is not None, ESPEAK_MISSING
    models = json.loads(genserve(tiny_server, "--json", "models").stdout)
    assert any(m["modality"] == "transcription" for m in models)
    speak(SENTENCE, tmp_path / "sentence.wav")
    printed = genserve(tiny_server, "transcription", str(tmp_path / "sentence.wav"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("[") and "->" in printed.stdout
    result = genserve(tiny_server, "--json", "stt", str(tmp_path / "sentence.wav"))
    transcript = json.loads(result.stdout)
    assert word_error_rate(SENTENCE, transcript["text"]) < 0.3
    assert transcript["segments"][0]["end_s"] > 0


def test_embed_health_models(tiny_server: ServerThread) -> None:
    embed = genserve(tiny_server, "--json", "embed", "hello", "world")
    assert embed.returncode == 0 and len(json.loads(embed.stdout)["embeddings"]) == 2
    health = genserve(tiny_server, "--json", "health")
    assert health.returncode == 0, health.stderr
    statuses = json.loads(health.stdout)
    assert set(statuses) == {"server", *(s.name for s in SPECS)}
    assert statuses["text"] == "SERVING"
    models = genserve(tiny_server, "models")
    assert models.returncode == 0 and "smollm2-135m-instruct" in models.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["text", "hi", "--top-p", "5"], 3, "INVALID_ARGUMENT: top_p"),
        (["image", "x", "--width", "100"], 3, "INVALID_ARGUMENT: width"),
    ],
)
def test_server_errors_give_clear_exit_codes(
    tiny_server: ServerThread, args: list[str], code: int, message: str
) -> None:
    result = genserve(tiny_server, "--request-id", "cli-error", *args)
    assert result.returncode == code
    assert message in result.stderr and "request_id=cli-error" in result.stderr


def test_unreachable_server_exits_4() -> None:
    result = genserve(None, "health")
    assert result.returncode == 4
    assert "UNAVAILABLE" in result.stderr


def test_bad_flags_exit_2(tiny_server: ServerThread) -> None:
    result = genserve(tiny_server, "image", "x", "--num-inference-steps", "many")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_model_by_name(tiny_server: ServerThread) -> None:
    args = ("--request-id", "cli-serial", "--model", "smollm2-135m-instruct-serial", "--json")
    result = genserve(tiny_server, *args, "text", "Hi", "--max-new-tokens", "3", "--no-do-sample")
    assert result.returncode == 0, result.stderr
    assert tiny_server.wait_for_usage_row("cli-serial")["model"] == "smollm2-135m-instruct-serial"
    unknown = genserve(tiny_server, "--model", "nope", "embed", "hello")
    assert unknown.returncode != 0 and "no embedding model named 'nope'" in unknown.stderr
