"""Models by name over HTTP: selection on the seed's routes and through the OpenAI SDK, the
life-cycle routes, and request bounds that are the server's own (read from ListModels)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import soundfile
from openai import OpenAI

from genserve.bridge.limits import ServerLimits
from genserve.bridge.schemas import MAX_SAFE_INTEGER
from genserve.bridge.settings import BridgeSettings
from genserve.contract import SPECS, ModalitySpec
from genserve.contract.limits import (
    AudioLimits,
    EmbeddingLimits,
    ImageLimits,
    MediaLimits,
    MeshLimits,
    TextLimits,
    VideoLimits,
)
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from tests.bridge_thread import BridgeThread
from tests.server_thread import ServerThread, make_settings
from tests.test_bridge import sse_events

DEFAULT_TEXT = "smollm2-135m-instruct"
SERIAL_TEXT = "smollm2-135m-instruct-serial"  # lazy, under the one-at-a-time engine
HTTP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def openai_client(bridge: BridgeThread) -> OpenAI:
    return OpenAI(base_url=f"{bridge.url}/v1", api_key="unused", max_retries=0)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The bridge's JSON error, carrying the request's ID."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


# -- selection by name ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, DEFAULT_TEXT, SERIAL_TEXT])
def test_seed_text_route_serves_the_model_it_names(
    http: httpx.Client, tiny_server: ServerThread, model: str | None
) -> None:
    request_id = f"seed-model-{model or 'unset'}"
    params: dict[str, str | int] = {"prompt": "Hi", "max_new_tokens": 2}
    if model is not None:
        params["model"] = model
    response = http.get("/generate/text", params=params, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert tiny_server.wait_for_usage_row(request_id)["model"] == (model or DEFAULT_TEXT)


def test_seed_json_body_names_its_model(http: httpx.Client, tiny_server: ServerThread) -> None:
    body = {"prompt": "Hi", "max_new_tokens": 3, "model": SERIAL_TEXT, "stream": True}
    response = http.post("/generate/text", json=body, headers={"X-Request-ID": "seed-json"})
    events = sse_events(response.text)
    assert events[-1][0] == "final"
    assert json.loads(events[-1][1])["usage"]["completion_tokens"] == 3
    assert tiny_server.wait_for_usage_row("seed-json")["model"] == SERIAL_TEXT


@pytest.mark.parametrize("model", [DEFAULT_TEXT, SERIAL_TEXT])
def test_openai_chat_serves_the_model_it_names(
    openai_client: OpenAI, tiny_server: ServerThread, model: str
) -> None:
    request_id = f"openai-{model}"
    completion = openai_client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        extra_headers={"X-Request-ID": request_id},
    )
    assert completion.model == model
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    assert tiny_server.wait_for_usage_row(request_id)["model"] == model


def test_openai_chat_stream_serves_the_model_it_names(
    openai_client: OpenAI, tiny_server: ServerThread
) -> None:
    stream = openai_client.chat.completions.create(
        model=SERIAL_TEXT,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        stream=True,
        extra_headers={"X-Request-ID": "openai-stream-serial"},
    )
    chunks = list(stream)
    assert chunks and {c.model for c in chunks} == {SERIAL_TEXT}
    assert tiny_server.wait_for_usage_row("openai-stream-serial")["model"] == SERIAL_TEXT


def test_openai_models_lists_every_model(openai_client: OpenAI, http: httpx.Client) -> None:
    ids = {m.id for m in openai_client.models.list()}
    assert ids == {m["name"] for m in http.get("/models").json()["models"]}
    assert {DEFAULT_TEXT, SERIAL_TEXT, "tiny-bark", "all-MiniLM-L6-v2"} <= ids


@pytest.mark.parametrize(
    ("path", "model"),
    [("/generate/text", "no-such-model"), ("/generate/image", DEFAULT_TEXT)],
    ids=["unknown", "another-modality"],
)
def test_seed_route_with_an_unknown_model_is_404(http: httpx.Client, path: str, model: str) -> None:
    response = http.get(path, params={"prompt": "Hi", "model": model})
    error = assert_error(response, 404, "NOT_FOUND")
    assert model in error["message"]


def test_openai_model_of_another_modality_is_model_not_found(openai_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        openai_client.chat.completions.create(
            model="tiny-bark", messages=[{"role": "user", "content": "hi"}]
        )
    body = error.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("model_not_found", "model")
    assert DEFAULT_TEXT in body["message"]  # the server names the text models it has


# -- the life cycle -------------------------------------------------------------------------


def test_models_route_lists_the_models_and_the_limits(http: httpx.Client) -> None:
    body = http.get("/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name[DEFAULT_TEXT]["is_default"] and by_name[DEFAULT_TEXT]["state"] == "loaded"
    assert by_name[DEFAULT_TEXT]["engine"] == "llama.cpp"
    assert not by_name[SERIAL_TEXT]["is_default"]
    assert by_name[SERIAL_TEXT]["load_policy"] == "lazy"
    assert by_name[SERIAL_TEXT]["engine"] == "transformers-serial"
    assert set(body["limits"]) == {spec.name for spec in SPECS}
    assert body["limits"]["text"]["max_new_tokens"] == TextLimits().max_new_tokens
    assert body["memory_budget_bytes"] == 0


def test_unload_refuses_with_409_until_loaded_again(
    http: httpx.Client, openai_client: OpenAI, tiny_server: ServerThread
) -> None:
    serial: dict[str, str | int] = {"prompt": "Hi", "max_new_tokens": 2, "model": SERIAL_TEXT}
    unloaded = http.post(f"/models/{SERIAL_TEXT}/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "unloaded" and unloaded.json()["memory_bytes"] == 0

    error = assert_error(http.get("/generate/text", params=serial), 409, "FAILED_PRECONDITION")
    assert SERIAL_TEXT in error["message"]
    with pytest.raises(openai.ConflictError) as conflict:  # the SDK does not retry a 409
        openai_client.chat.completions.create(
            model=SERIAL_TEXT, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert isinstance(conflict.value.body, dict)
    assert conflict.value.body["code"] == "failed_precondition"

    loaded = http.post(f"/models/{SERIAL_TEXT}/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["state"] == "loaded" and loaded.json()["memory_bytes"] > 0
    served = http.get("/generate/text", params=serial, headers={"X-Request-ID": "reloaded"})
    assert served.status_code == 200, served.text
    assert tiny_server.wait_for_usage_row("reloaded")["model"] == SERIAL_TEXT


@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_or_unload_of_an_unknown_model_is_404(http: httpx.Client, action: str) -> None:
    error = assert_error(http.post(f"/models/no-such-model/{action}"), 404, "NOT_FOUND")
    assert "no-such-model" in error["message"]


# -- bounds: the server's, published by the bridge ------------------------------------------

# A server whose limits all differ from the defaults, serving one model: Bark, whose
# default voice is one of the only two presets this server allows.
SERVER_PRESETS = ("v2/en_speaker_3", "v2/en_speaker_4")
CUSTOM_LIMITS: dict[str, Any] = {
    "text": TextLimits(
        max_new_tokens=123,
        max_prompt_chars=4000,
        max_messages=12,
        max_stop_sequences=3,
        max_stop_sequence_chars=20,
        max_top_k=77,
        max_temperature=1.5,
    ),
    "media": MediaLimits(max_prompt_chars=300),
    "image": ImageLimits(max_steps=9, max_guidance_scale=12.0, max_side=512, max_pixels=256 * 256),
    "audio": AudioLimits(max_prompt_chars=111, voice_presets=SERVER_PRESETS),
    "video": VideoLimits(max_frames=7, max_fps=24.0, max_steps=5, max_side=256),
    "mesh": MeshLimits(max_steps=6, max_guidance_scale=20.0),
    "embedding": EmbeddingLimits(max_texts=5, max_text_chars=99),
}


def bark_only_manifest(default_preset: str) -> Manifest:
    bark = next(s for s in load_manifest(manifest_path("tiny")).audio if s.name == "tiny-bark")
    defaults = {**bark.defaults, "preset": default_preset}
    return Manifest(audio=(bark.model_copy(update={"defaults": defaults}),))


@pytest.fixture(scope="module")
def custom_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = make_settings(tmp_path_factory.mktemp("custom-limits"), **CUSTOM_LIMITS)
    server = ServerThread(settings, bark_only_manifest(SERVER_PRESETS[0])).start()
    bridge = BridgeThread(BridgeSettings(grpc_target=f"localhost:{server.port}")).start()
    try:
        with httpx.Client(base_url=bridge.url, timeout=HTTP_TIMEOUT_S) as client:
            yield client
    finally:
        bridge.stop()
        server.stop()


def bound(schema: dict[str, Any], key: str) -> Any:
    """A bound in a property's schema, looking through anyOf (optional fields)."""
    if key in schema:
        return schema[key]
    found = [bound(option, key) for option in schema.get("anyOf", [])]
    values = [value for value in found if value is not None]
    return values[0] if values else None


def body_property(document: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    prop: dict[str, Any] = document["components"]["schemas"][model]["properties"][field]
    return prop


@pytest.mark.parametrize(
    ("model", "field", "key", "modality", "limit"),
    [
        ("TextBody", "max_new_tokens", "maximum", "text", "max_new_tokens"),
        ("TextBody", "prompt", "maxLength", "text", "max_prompt_chars"),
        ("TextBody", "top_k", "maximum", "text", "max_top_k"),
        ("TextBody", "temperature", "maximum", "text", "max_temperature"),
        ("TextBody", "stop", "maxItems", "text", "max_stop_sequences"),
        ("ChatCompletionRequest", "max_tokens", "maximum", "text", "max_new_tokens"),
        ("ChatCompletionRequest", "messages", "maxItems", "text", "max_messages"),
        ("ImageBody", "prompt", "maxLength", "image", "max_prompt_chars"),
        ("ImageBody", "num_inference_steps", "maximum", "image", "max_steps"),
        ("ImageBody", "guidance_scale", "maximum", "image", "max_guidance_scale"),
        ("ImageBody", "width", "maximum", "image", "max_side"),
        ("AudioBody", "prompt", "maxLength", "audio", "max_prompt_chars"),
        ("AudioBody", "preset", "enum", "audio", "voice_presets"),
        ("SpeechRequest", "input", "maxLength", "audio", "max_prompt_chars"),
        ("MeshBody", "num_inference_steps", "maximum", "mesh", "max_steps"),
        ("MeshBody", "guidance_scale", "maximum", "mesh", "max_guidance_scale"),
        ("VideoForm", "num_frames", "maximum", "video", "max_frames"),
        ("VideoForm", "fps", "maximum", "video", "max_fps"),
        ("VideoForm", "num_inference_steps", "maximum", "video", "max_steps"),
        ("VideoForm", "width", "maximum", "video", "max_side"),
        ("EmbeddingRequest", "input", "maxItems", "embedding", "max_texts"),
        ("EmbeddingRequest", "input", "maxLength", "embedding", "max_text_chars"),
    ],
)
def test_openapi_bounds_are_the_servers_limits(
    custom_http: httpx.Client, model: str, field: str, key: str, modality: str, limit: str
) -> None:
    document = custom_http.get("/openapi.json").json()
    limits = custom_http.get("/models").json()["limits"]
    published = bound(body_property(document, model, field), key)
    assert published == limits[modality][limit]
    # and the limits are this server's, not the defaults
    defaults = {"text": TextLimits(), "audio": AudioLimits(), "embedding": EmbeddingLimits()}
    if modality in defaults:
        assert published != json.loads(defaults[modality].model_dump_json())[limit]


def test_query_parameters_and_image_sizes_follow_the_server(custom_http: httpx.Client) -> None:
    document = custom_http.get("/openapi.json").json()
    parameters = document["paths"]["/generate/text"]["get"]["parameters"]
    max_new_tokens = next(p for p in parameters if p["name"] == "max_new_tokens")
    assert bound(max_new_tokens["schema"], "maximum") == 123
    size = body_property(document, "ImageGenerationRequest", "size")
    assert bound(size, "enum") == ["64x64", "128x128", "256x256"]  # 256 x 256 pixels at most
    # OpenAI's voice names whose Bark preset this server has, then its presets
    voice = body_property(document, "SpeechRequest", "voice")
    assert bound(voice, "enum") == ["fable", "onyx", *SERVER_PRESETS]


def test_the_bridge_enforces_the_servers_bounds(custom_http: httpx.Client) -> None:
    response = custom_http.get("/generate/text", params={"prompt": "Hi", "max_new_tokens": 124})
    assert "max_new_tokens" in assert_error(response, 422, "INVALID_ARGUMENT")["message"]
    speech = custom_http.post(
        "/v1/audio/speech", json={"model": "tiny-bark", "input": "Hi", "voice": "alloy"}
    )
    assert speech.status_code == 422 and "voice" in speech.json()["error"]["message"]


def test_audio_without_a_voice_gets_the_models_default(custom_http: httpx.Client) -> None:
    # This server allows speakers 3 and 4 only, and its model's default is 3: a bridge that
    # filled in a default of its own (speaker 1) would be refused.
    seed = custom_http.get("/generate/audio", params={"prompt": "Hello"})
    assert seed.status_code == 200, seed.text
    speech = custom_http.post("/v1/audio/speech", json={"model": "tiny-bark", "input": "Hello"})
    assert speech.status_code == 200, speech.text
    for response in (seed, speech):
        samples, rate = soundfile.read(io.BytesIO(response.content))
        assert rate == 24_000 and len(samples) > 0


# -- every spec's seed route, from the spec: a new modality gets these for free -------------

# JSON Schema's bound keywords, as pydantic writes a Field's bounds.
BOUND_KEYWORDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "enum",
)
SPEC_IDS = [spec.name for spec in SPECS]


def resolved(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A schema with its $ref and allOf parts merged in (their properties together)."""
    if "$ref" in schema:
        return resolved(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
    merged = dict(schema)
    properties = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        properties |= resolved(part, definitions).get("properties", {})
    merged["properties"] = properties
    return merged


def bounds_of(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A property's bounds, through anyOf (optional fields), $refs and list items."""
    found: dict[str, Any] = {}
    for option in schema.get("anyOf", [schema]):
        option = resolved(option, definitions)
        found |= {key: option[key] for key in BOUND_KEYWORDS if key in option}
        if isinstance(option.get("items"), dict) and "$ref" not in option["items"]:
            found["items"] = bounds_of(option["items"], definitions)
    return found


def spec_properties(spec: ModalitySpec[Any, Any], limits: ServerLimits) -> dict[str, Any]:
    """What the spec says its request's fields are, bounded by these limits; integers
    within what JSON holds exactly, as the bridge states them (a seed's int64 is not)."""
    schema = spec.request_model(limits.of(spec)).model_json_schema()
    definitions = schema.get("$defs", {})
    properties = {}
    for name, prop in schema["properties"].items():
        bounds = bounds_of(prop, definitions)
        if isinstance(bounds.get("maximum"), int):
            bounds["maximum"] = min(bounds["maximum"], MAX_SAFE_INTEGER)
        if isinstance(bounds.get("minimum"), int):
            bounds["minimum"] = max(bounds["minimum"], -MAX_SAFE_INTEGER)
        properties[name] = bounds
    return properties


def published_routes(document: dict[str, Any], spec: ModalitySpec[Any, Any]) -> dict[str, Any]:
    """Each of the spec's seed routes (GET, POST) and its fields' published bounds."""
    definitions = document["components"]["schemas"]
    operations = document["paths"][spec.http_path]
    routes: dict[str, Any] = {}
    if "get" in operations:
        parameters = operations["get"]["parameters"]
        routes["GET"] = {p["name"]: bounds_of(p["schema"], definitions) for p in parameters}
    ((media_type, content),) = operations["post"]["requestBody"]["content"].items()
    body = resolved(content["schema"], definitions)
    routes[f"POST {media_type}"] = {
        name: bounds_of(prop, definitions) for name, prop in body["properties"].items()
    }
    return routes


@pytest.fixture(scope="module")
def custom_document(custom_http: httpx.Client) -> dict[str, Any]:
    document: dict[str, Any] = custom_http.get("/openapi.json").json()
    return document


@pytest.fixture(scope="module")
def custom_limits(custom_http: httpx.Client) -> ServerLimits:
    return ServerLimits.from_dict(custom_http.get("/models").json()["limits"])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_spec_has_its_seed_route_with_the_servers_bounds(
    custom_document: dict[str, Any], custom_limits: ServerLimits, spec: ModalitySpec[Any, Any]
) -> None:
    expected = spec_properties(spec, custom_limits)
    routes = published_routes(custom_document, spec)
    if spec.upload is not None:
        assert list(routes) == ["POST multipart/form-data"]  # the file and the form alone
    else:
        assert list(routes) == ["GET", "POST application/json"]
    for route, published in routes.items():
        assert "model" in published, route
        for name, bounds in expected.items():
            if spec.upload is not None and name == spec.upload.field:
                assert name in published, route  # the file's part (its size: the server's)
            elif name in published:
                # every bound of the spec's, exactly; a bound the contract cannot state yet
                # may come on top (contract_gaps.py: a query's prompt must hold something)
                assert published[name] | bounds == published[name], (route, name)
            else:  # only a body carries a list of messages
                assert route == "GET" and name == "messages", (route, name)


def out_of_bounds(spec: ModalitySpec[Any, Any], limits: ServerLimits) -> tuple[str, Any, str]:
    """A field, a value past its bound and the bound, from the spec's bounded fields (not
    the seed: its bound is int64's, not the server's)."""
    properties = {k: v for k, v in spec_properties(spec, limits).items() if k != "seed"}
    for name, bounds in properties.items():
        if "maximum" in bounds:
            high = bounds["maximum"]
            return name, high + 1, f"{high:g}"  # as pydantic words it: 20.0 is "20"
    for name, bounds in properties.items():
        if "maxLength" in bounds and name != getattr(spec.upload, "field", None):
            return name, "x" * (bounds["maxLength"] + 1), str(bounds["maxLength"])
        if "maxItems" in bounds:
            return name, ["x"] * (bounds["maxItems"] + 1), str(bounds["maxItems"])
    raise AssertionError(f"{spec.name} has no bounded field to cross")


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_seed_route_refuses_a_value_past_its_bound(
    custom_http: httpx.Client, custom_limits: ServerLimits, spec: ModalitySpec[Any, Any]
) -> None:
    field, value, limit = out_of_bounds(spec, custom_limits)
    if spec.upload is not None:
        files = {spec.upload.field: ("upload.bin", b"x", "application/octet-stream")}
        responses = [custom_http.post(spec.http_path, files=files, data={field: str(value)})]
    else:
        responses = [
            custom_http.get(spec.http_path, params={field: value}),
            custom_http.post(spec.http_path, json={field: value}),
        ]
    for response in responses:
        message = assert_error(response, 422, "INVALID_ARGUMENT")["message"]
        assert field in message and limit in message, message
