"""Contract tests: every spec in the table, through the real server and generic stubs.

Parametrized over genserve.contract.SPECS, so a new modality gets them for free: it is
served and healthy, its stream has the shape its interaction promises, its media bytes
match their sha256, a cancel stops its engine, and the limits ListModels publishes are
the ones the server enforces (a value just past each published bound is refused with
INVALID_ARGUMENT naming the field and the bound).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.contract import SPECS, Interaction, ModalitySpec
from genserve.v1 import models_pb2, models_pb2_grpc
from tests.server_thread import ServerThread, settled_stats

CALL_TIMEOUT_S = 300
IDLE_TIMEOUT_S = 60
SERVING = health_pb2.HealthCheckResponse.SERVING
STREAMS = [spec for spec in SPECS if spec.interaction is not Interaction.UNARY]


def ids(spec: ModalitySpec[Any, Any]) -> str:
    return spec.name


def call(
    channel: grpc.Channel,
    spec: ModalitySpec[Any, Any],
    fields: Mapping[str, Any],
    request_id: str | None = None,
) -> Any:
    """The spec's RPC through a generic stub: what any new modality gets."""
    request = spec.fields_to_request(fields)
    kind = channel.unary_unary if spec.interaction is Interaction.UNARY else channel.unary_stream
    method = kind(
        spec.rpc_path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=spec.event_type.FromString,
    )
    metadata = (("x-request-id", request_id),) if request_id else None
    return method(request, timeout=CALL_TIMEOUT_S, metadata=metadata)


def published_limits(channel: grpc.Channel) -> dict[str, Any]:
    reply = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
    limits: dict[str, Any] = MessageToDict(reply.limits)
    return limits


def test_the_contract_imports_without_the_model_stack() -> None:
    probe = (
        "import sys, json\n"
        "from genserve.contract import SPECS\n"
        "for spec in SPECS:\n"
        "    spec.request_model(spec.limits_type()); spec.fields_to_request(spec.example())\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'PIL', 'numpy', 'av', 'faster_whisper'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_every_spec_is_served_healthy_and_listed(
    channel: grpc.Channel, spec: ModalitySpec[Any, Any]
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=spec.service)).status == SERVING
    reply = models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
    served = [m for m in reply.models if m.modality == spec.name and m.is_default]
    assert len(served) == 1 and served[0].service == spec.service
    assert spec.name in published_limits(channel)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_each_answer_has_the_shape_its_interaction_promises(
    channel: grpc.Channel, spec: ModalitySpec[Any, Any]
) -> None:
    if spec.interaction is Interaction.UNARY:
        reply = call(channel, spec, spec.example())
        assert reply.ByteSize() > 0
        return
    events = list(call(channel, spec, spec.example()))
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    if spec.interaction is Interaction.TEXT_STREAM:
        assert set(kinds[:-1]) <= {spec.piece}
        return
    # A media stream: one header (progress may come before or after it), then chunks; a
    # file that streams as it is made (a PNG's head with its generation record, speech)
    # may send progress between its chunks, and ends with a chunk.
    assert kinds.count("header") == 1
    first_chunk = kinds.index("chunk")
    assert kinds.index("header") < first_chunk
    assert set(kinds[first_chunk:-1]) <= {"chunk", "progress"} and kinds[-2] == "chunk"
    chunks = [event.chunk for event in events if event.HasField("chunk")]
    data = b"".join(chunk.data for chunk in chunks)
    offsets = [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    assert [chunk.offset for chunk in chunks] == offsets
    final = events[-1].final
    assert final.total_bytes == len(data) > 0
    assert final.sha256 == hashlib.sha256(data).hexdigest()
    header = events[kinds.index("header")].header
    assert header.mime_type in spec.mime_types


@pytest.mark.parametrize("spec", STREAMS, ids=ids)
def test_a_cancel_stops_the_engine(
    tiny_server: ServerThread, channel: grpc.Channel, spec: ModalitySpec[Any, Any]
) -> None:
    engine = tiny_server.server.registry.resolve(spec.name, None).engine
    assert engine is not None
    cancelled_before = settled_stats(engine).cancelled
    request_id = f"contract-cancel-{spec.name}"
    stream = call(channel, spec, long_request(spec), request_id)
    next(stream)  # the work has started
    stream.cancel()
    assert engine.wait_idle(IDLE_TIMEOUT_S), f"{spec.name} kept working after the cancel"
    assert engine.stats().cancelled == cancelled_before + 1
    row = tiny_server.wait_for_usage_row(request_id)
    assert row["status_code"] == "CANCELLED" and row["successful"] == 0


def long_request(spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    """The example, made long enough that a cancel after its first event finds work left."""
    fields = dict(spec.example())
    longer = {"max_new_tokens": 200, "num_inference_steps": 20, "num_frames": 8}
    fields |= {k: v for k, v in longer.items() if k in spec.request_fields}
    if spec.upload is not None and spec.upload.field == "audio":
        from genserve.contract import samples

        fields["audio"] = samples.wav(120.0)
    return fields


def past_bounds(spec: ModalitySpec[Any, Any], limits: Mapping[str, Any]) -> Iterator[Any]:
    """(field, value just past a published bound, the bound) for each bounded field whose
    proto type can hold such a value (an int64 seed has no value past its bounds)."""
    for name, value, bound in _past_bounds(spec, limits):
        try:
            spec.fields_to_request({name: value})
        except (ValueError, TypeError):
            continue
        yield name, value, bound


def _past_bounds(spec: ModalitySpec[Any, Any], limits: Mapping[str, Any]) -> Iterator[Any]:
    model = spec.request_model(spec.limits_type.model_validate(limits))
    descriptor = spec.request_descriptor
    for name, schema in model.model_json_schema()["properties"].items():
        if spec.upload is not None and name == spec.upload.field:
            continue  # bytes: refused at the upload's size (the upload tests send those)
        bounds = next((b for b in schema.get("anyOf", []) if b.get("type") != "null"), schema)
        step = bounds.get("multipleOf", 1 if bounds.get("type") == "integer" else 0.5)
        if "maximum" in bounds:
            yield name, bounds["maximum"] + step, bounds["maximum"]
        if "minimum" in bounds and bounds.get("type") == "number":
            yield name, bounds["minimum"] - step, bounds["minimum"]
        unsigned = descriptor.fields_by_name[name].cpp_type == 3  # CPPTYPE_UINT32
        if "minimum" in bounds and bounds.get("type") == "integer" and not unsigned:
            yield name, bounds["minimum"] - step, bounds["minimum"]
        if "maxLength" in bounds:
            yield name, "x" * (bounds["maxLength"] + 1), bounds["maxLength"]
        if "maxItems" in bounds:
            item = _item(spec, name)
            yield name, [item] * (bounds["maxItems"] + 1), bounds["maxItems"]


def _item(spec: ModalitySpec[Any, Any], name: str) -> Any:
    example = spec.example().get(name)
    if example:
        return example[0]
    field = spec.request_descriptor.fields_by_name[name]
    return {"role": "user", "content": "hi"} if field.message_type is not None else "x"


def refusal(channel: grpc.Channel, spec: ModalitySpec[Any, Any], fields: Any) -> grpc.RpcError:
    try:
        answer = call(channel, spec, fields)
        if not isinstance(answer, Message):
            list(answer)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{spec.name} took {sorted(fields)} past a bound")


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_published_limits_are_the_enforced_ones(
    channel: grpc.Channel, spec: ModalitySpec[Any, Any]
) -> None:
    cases = list(past_bounds(spec, published_limits(channel)[spec.name]))
    assert cases, f"{spec.name} publishes no bounds"
    problems = []
    for field, value, bound in cases:
        error = refusal(channel, spec, {**spec.example(), field: value})
        details = error.details() or ""
        shown = int(bound) if float(bound).is_integer() else bound
        refused_right = error.code() is grpc.StatusCode.INVALID_ARGUMENT
        if not (refused_right and details.startswith(field) and str(shown) in details):
            problems.append(f"{field} past {bound}: {error.code().name} {details!r}")
    assert not problems, problems


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_enums_go_by_their_short_or_full_names(spec: ModalitySpec[Any, Any]) -> None:
    for field in spec.request_descriptor.fields:
        if field.enum_type is None:
            continue
        for value in field.enum_type.values[1:]:  # 0 is "unspecified": the default
            short = value.name.split("_")[-1].lower()
            by_short = spec.fields_to_request({field.name: short})
            by_full = spec.fields_to_request({field.name: value.name})
            assert getattr(by_short, field.name) == getattr(by_full, field.name) == value.number
