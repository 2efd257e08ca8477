"""What crosses the edge-to-replica hop is pickled by Ray: every request and event type
survives it, and a refusal keeps its code and message. The manifest's Ray table is checked
where it is read. No cluster here (see test_ray_placement.py)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from genserve.contract.events import Chunk, Final, Header, Progress
from genserve.contract.modalities.audio import AudioParams
from genserve.contract.modalities.image import ImageFormat, ImageParams
from genserve.contract.modalities.mesh import MeshFormat, MeshParams
from genserve.contract.modalities.transcription import Segment, TranscriptionFinal
from genserve.contract.modalities.video import VideoParams
from genserve.server.errors import InvalidArgument, ResourceExhausted
from genserve.server.manifest import ModelSpec
from genserve.server.media.embedding import Embeddings
from genserve.server.ray_serve.placement import RayPlacement
from genserve.server.ray_serve.wire import ReplicaError, ReplicaInfo, ReplicaStatus
from genserve.server.text.types import (
    ChatTurn,
    FinishReason,
    SamplingParams,
    TextDelta,
    TextFinal,
    TextRequest,
)

VALUES: list[Any] = [
    TextRequest(
        messages=(ChatTurn("user", "hi"),),
        params=SamplingParams(8, False, 1.0, 0, 1.0, seed=1, stop=("\n",)),
    ),
    TextDelta("hel", 1),
    TextFinal(FinishReason.STOP, 3, 1, seed=1, queued_ms=1.0, inference_ms=2.0, replica="r1"),
    ImageParams(prompt="a room", num_inference_steps=4, width=64, height=64, seed=1),
    ImageParams(prompt="a room", format=ImageFormat.JPEG),
    VideoParams(image=b"\x89PNG", num_frames=4, width=64, height=64, seed=1),
    MeshParams(prompt="a chair", num_inference_steps=2, grid_size=16, format=MeshFormat.OBJ),
    AudioParams(prompt="hello", preset="v2/en_speaker_1", seed=1),
    Segment(0.0, 1.5, " Hello."),
    TranscriptionFinal("en", 0.99, 1.5, 1, queued_ms=1.0, inference_ms=2.0),
    Header("image/png", "image-1.png", width=64, height=64),
    Progress(1, 4, "denoise"),
    Chunk(b"\x89PNG", 0),
    Final(4, "ab", 1.0, 2.0, 3.0, seed=1, replica="r1"),
    Embeddings(vectors=[[0.5, 0.5]], prompt_tokens=2),
    ReplicaInfo("r1", "SERVE_REPLICA::app#engine#r1", "node", 42),
    ReplicaStatus(ReplicaInfo("r1", "a", "n", 1), True, 0, 1, 0, 9, 0.0),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_requests_and_events_pickle(value: Any) -> None:
    copy = pickle.loads(pickle.dumps(value))
    assert copy == value


def test_a_refusal_keeps_its_code_message_and_retry_after() -> None:
    for error in (InvalidArgument("width", "too wide"), ResourceExhausted("full", 2.0)):
        relayed = pickle.loads(pickle.dumps(ReplicaError.of(error))).to_local()
        assert relayed.grpc_code is error.grpc_code
        assert str(relayed) == str(error)
        assert relayed.retry_after_s == error.retry_after_s
    # The reason for the relay: this one does not survive pickling as it is.
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(InvalidArgument("width", "too wide")))
    assert ReplicaError.of(InvalidArgument("a", "b")).to_local().grpc_code is (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "source": "store:x", **fields})


def test_the_manifests_ray_table() -> None:
    assert spec().placement == "process"  # the default: a worker process of its own
    placed = spec(placement="ray", ray={"num_replicas": 2, "num_cpus": 0.5})
    options = placed.ray.deployment_options()
    assert options["num_replicas"] == 2
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    scaled = RayPlacement.model_validate({"autoscaling": {"min_replicas": 1, "max_replicas": 4}})
    assert "num_replicas" not in scaled.deployment_options()
    assert scaled.deployment_options()["autoscaling_config"]["max_replicas"] == 4
    with pytest.raises(ValidationError, match="placement"):
        spec(ray={"num_replicas": 2})  # a Ray table on a model that runs in process
    with pytest.raises(ValidationError, match="not both"):
        RayPlacement.model_validate({"num_replicas": 2, "autoscaling": {}})


def test_the_rayservice_builds_the_ray_profiles_applications() -> None:
    """deploy/rayservice.yaml's applications resolve to genserve's builder and build."""
    import importlib

    import yaml

    from genserve.server.manifest import load_manifest, manifest_path
    from genserve.server.ray_serve.placement import app_name

    root = Path(__file__).resolve().parent.parent
    service = yaml.safe_load((root / "deploy" / "rayservice.yaml").read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["proxy_location"] == "Disabled"  # the edge is the front
    manifest = load_manifest(manifest_path("ray"))
    for app in config["applications"]:
        module, _, function = app["import_path"].partition(":")
        built = getattr(importlib.import_module(module), function)(app["args"])
        assert type(built).__name__ == "Application"
        spec = next(s for s in (*manifest.text, *manifest.image) if s.name == app["args"]["model"])
        assert app["name"] == app_name(spec.name, spec.ray)  # where the edge looks for it
