"""Schemathesis against the live bridge: generated requests from its own OpenAPI
document, every response checked against it (status, content type, body schema) and
never a 5xx.

The server here enforces tight limits, which the bridge reads from it and publishes, and
its models' defaults are small, so that generated requests stay cheap on a CPU; the checks
are the same at any size.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

from genserve.bridge.settings import BridgeSettings
from genserve.contract.limits import (
    PIPER_VOICES,
    AudioLimits,
    ImageLimits,
    MediaLimits,
    MeshLimits,
    TextLimits,
    VideoLimits,
)
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.settings import Settings
from tests import speech
from tests.bridge_thread import BridgeThread
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread, make_settings

EXAMPLES_PER_OPERATION = 6
CHEAP_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"max_new_tokens": 4},
    "image": {"num_inference_steps": 2},
    "video": {"num_frames": 2, "num_inference_steps": 1, "decode_chunk_size": 2},
    "mesh": {"num_inference_steps": 2, "grid_size": 16},
}


def tight_settings(data_dir: Path) -> Settings:
    return make_settings(
        data_dir,
        text=TextLimits(max_new_tokens=4, max_prompt_chars=200, max_messages=4),
        media=MediaLimits(max_prompt_chars=200),
        image=ImageLimits(max_steps=2, max_side=64, max_pixels=64 * 64),
        video=VideoLimits(max_frames=2, max_steps=2, max_side=64, max_image_bytes=1024 * 1024),
        mesh=MeshLimits(max_steps=2),
        # The voices of the one speech model served here (a voice list is the modality's,
        # not a model's: with Bark beside piper, a Bark preset sent to the default piper
        # model would be schema-valid and refused).
        audio=AudioLimits(voice_presets=PIPER_VOICES),
    )


def cheap_manifest() -> Manifest:
    manifest = load_manifest(manifest_path("tiny"))
    changes = {}
    for modality, defaults in CHEAP_DEFAULTS.items():
        changes[modality] = tuple(
            spec.model_copy(update={"defaults": {**spec.defaults, **defaults}})
            for spec in manifest.specs(Modality(modality))
        )
    changes["audio"] = tuple(spec for spec in manifest.audio if spec.default)
    return manifest.model_copy(update=changes)


def upload_samples() -> dict[str, bytes]:
    """A real file per upload field: "binary" in the schema, but the server needs a
    picture to animate and a recording to transcribe."""
    rate = 16_000
    second = (0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    wav = speech.encode(second, rate, "WAV")
    # "file": OpenAI's upload; "input_reference": the image of OpenAI's /v1/videos
    return {"image": png_bytes(), "audio": wav, "file": wav, "input_reference": png_bytes()}


@pytest.fixture(scope="module")
def live_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeThread]:
    server = ServerThread(tight_settings(tmp_path_factory.mktemp("schema")), cheap_manifest())
    server.start()
    bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{server.port}")).start()
    yield bridge
    bridge.stop()
    server.stop()


def test_bridge_conforms_to_its_openapi_document(live_bridge: BridgeThread) -> None:
    schema = schemathesis.openapi.from_url(f"{live_bridge.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 18  # every route: seed, JSON variants, OpenAI, models, health
    samples = upload_samples()

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same cases every run: a failure here is reproducible
            database=None,
        )
        def conforms(case: Any) -> None:
            excluded = []
            uploads = set(samples) & set(case.body) if isinstance(case.body, dict) else set()
            if uploads:
                # A real file in place of random bytes, which schemathesis then reads as a
                # hand-made (negative) case.
                case.body = {**case.body, **{field: samples[field] for field in uploads}}
                excluded = [negative_data_rejection]
            body = case.body if isinstance(case.body, dict) else {}
            if isinstance(body.get("params"), dict) and "image" in body["params"]:
                # POST /v1/jobs: a video job's image, base64 in JSON, must be a real image.
                body["params"]["image"] = base64.b64encode(png_bytes()).decode()
                excluded = [negative_data_rejection]
            case.call_and_validate(timeout=120, excluded_checks=excluded)

        conforms()
