"""The `genserve` CLI, run as a subprocess against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.server_thread import ServerThread
from tests.media_calls import png_bytes

CLI_TIMEOUT_S = 180


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
    result = genserve(tiny_server, "text", "What is FastAPI?", "--max-new-tokens", "8", "--greedy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_image_writes_a_file(tiny_server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "room.png"
    result = genserve(tiny_server, "image", "a cozy living room", "-o", str(out), "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (64, 64)
    assert "saved" in result.stderr


def test_json_metadata(tiny_server: ServerThread, tmp_path: Path) -> None:
    result = genserve(tiny_server, "--json", "3d", "a chair", "-o", str(tmp_path), "--steps", "2")
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
    video = genserve(
        tiny_server,
        "video",
        str(source),
        "-o",
        str(tmp_path / "room.mp4"),
        "--frames",
        "2",
        "--steps",
        "1",
    )
    assert video.returncode == 0, video.stderr
    assert (tmp_path / "room.mp4").read_bytes()[4:8] == b"ftyp"


def test_embed_health_models(tiny_server: ServerThread) -> None:
    embed = genserve(tiny_server, "--json", "embed", "hello", "world")
    assert embed.returncode == 0 and len(json.loads(embed.stdout)["embeddings"]) == 2
    health = genserve(tiny_server, "--json", "health")
    assert health.returncode == 0 and json.loads(health.stdout)["text"] == "SERVING"
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
    result = genserve(tiny_server, "image", "x", "--steps", "many")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_model_by_name(tiny_server: ServerThread) -> None:
    args = ("--request-id", "cli-serial", "--model", "smollm2-135m-instruct-serial", "--json")
    result = genserve(tiny_server, *args, "text", "Hi", "--max-new-tokens", "3", "--greedy")
    assert result.returncode == 0, result.stderr
    assert tiny_server.wait_for_usage_row("cli-serial")["model"] == "smollm2-135m-instruct-serial"
    unknown = genserve(tiny_server, "--model", "nope", "embed", "hello")
    assert unknown.returncode != 0 and "no embedding model named 'nope'" in unknown.stderr
