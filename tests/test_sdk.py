"""The Python SDK, sync and async: its contract for every spec against a stand-in server
(tests/fake_server.py), then every modality against a real one."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import soundfile
from PIL import Image

from genserve.client import (
    AsyncGenServe,
    DeadlineExceededError,
    FailedPreconditionError,
    GenServe,
    GenServeError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    MediaResult,
    NotFoundError,
    PiecesResult,
    Progress,
    RequestCancelledError,
    ResourceExhaustedError,
    TextResult,
    Transcript,
    UnauthenticatedError,
    UnavailableError,
    defaults,
)
from genserve.client.calls import Kind, kind_of
from genserve.client.errors import from_rpc_error
from genserve.client.folds import joined_increments
from genserve.client.request import build_request, parameter_names
from genserve.client.retry import RetryPolicy
from genserve.contract import SPECS, Interaction, ModalitySpec
from genserve.contract.events import Chunk, Final, Header
from genserve.contract.metadata import AUTHORIZATION, REQUEST_ID, RETRY_AFTER_MS
from genserve.contract.modalities.image import IMAGE
from genserve.contract.modalities.text import TEXT
from genserve.contract.modalities.transcription import TRANSCRIPTION, Segment, transcript_text
from genserve.contract.spec import message_class, message_to_fields
from genserve.server.manifest import Manifest, Modality, load_manifest, manifest_path
from genserve.server.settings import MediaLimits
from tests.fake_server import (
    MEDIA_DATA,
    TEXT_PIECES,
    Failure,
    FakeServer,
    every_field,
    every_final_field,
    sample,
)
from tests.media_calls import png_bytes
from tests.server_thread import ServerThread, make_settings
from tests.text_calls import served_text_engine

TRANSPORTS = ("sync", "async")
STREAMED = [s for s in SPECS if kind_of(s) is not Kind.UNARY]
MEDIA = [s for s in SPECS if kind_of(s) is Kind.MEDIA]
TEXT_STREAMS = [s for s in SPECS if s.interaction is Interaction.TEXT_STREAM]
RESULT_TYPES: dict[Kind, type] = {
    Kind.MEDIA: MediaResult,
    Kind.TEXT: TextResult,
    Kind.TRANSCRIPT: Transcript,
    Kind.PIECES: PiecesResult,
    Kind.UNARY: dict,
}


def by_name(specs: list[ModalitySpec[Any, Any]]) -> Any:
    return pytest.mark.parametrize("spec", specs, ids=[s.name for s in specs])


every_spec = by_name(list(SPECS))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setattr(defaults, "RETRY_BACKOFF_S", 0.01)  # retried UNAVAILABLE: no naps
    server = FakeServer().start()
    yield server
    server.stop()


def call(
    transport: str,
    target: str,
    spec: ModalitySpec[Any, Any],
    *args: Any,
    streamed: bool = False,
    options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    """One call through either transport: the pieces of `stream()` when `streamed`, else
    the whole result (`generate()`, or `create()` for a unary spec)."""
    whole = "create" if kind_of(spec) is Kind.UNARY else "generate"
    if transport == "sync":
        with GenServe(target, **(client_options or {})) as gs:
            calls = gs.calls(spec).with_options(**(options or {}))
            if streamed:
                return list(calls.stream(*args, **fields))
            return getattr(calls, whole)(*args, **fields)

    async def scenario() -> Any:
        async with AsyncGenServe(target, **(client_options or {})) as gs:
            calls = gs.calls(spec).with_options(**(options or {}))
            if streamed:
                return [piece async for piece in calls.stream(*args, **fields)]
            return await getattr(calls, whole)(*args, **fields)

    return asyncio.run(scenario())


# -- the contract, for every spec -------------------------------------------------------


def pyi_parameters(spec: ModalitySpec[Any, Any]) -> list[str]:
    """The request class's __init__ parameters in its .pyi: what mypy types calls with."""
    module = inspect.getfile(spec.proto_module)
    tree = ast.parse(Path(module).with_suffix(".pyi").read_text())
    name = spec.request_descriptor.name
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    (init,) = (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return [a.arg for a in init.args.args[1:]]


@every_spec
def test_the_sdks_parameters_are_the_protos_fields(spec: ModalitySpec[Any, Any]) -> None:
    fields = [f.name for f in spec.request_descriptor.fields]
    # What the typed methods accept (the ParamSpec), in the order positional arguments
    # map onto, is what the SDK sends: the proto request's fields.
    assert pyi_parameters(spec) == list(parameter_names(spec)) == fields
    assert set(fields) - {"model"} == set(spec.request_fields)


@every_spec
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_field_reaches_the_server(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    fields = every_field(spec)
    result = call(transport, fake.target, spec, **fields)
    assert isinstance(result, RESULT_TYPES[kind_of(spec)])
    (received,) = fake.received
    assert message_to_fields(received.request) == fields


@every_spec
def test_the_first_field_may_be_positional(spec: ModalitySpec[Any, Any]) -> None:
    first = spec.request_descriptor.fields[0]
    request = build_request(spec, (sample(first),), {})
    assert message_to_fields(request)[first.name] == sample(first)
    with pytest.raises(TypeError, match="multiple values"):
        build_request(spec, (sample(first),), {first.name: sample(first)})


@every_spec
def test_unknown_fields_and_options_as_fields_are_refused(spec: ModalitySpec[Any, Any]) -> None:
    with pytest.raises(TypeError, match="no field 'steps'"):
        build_request(spec, (), {"steps": 1})
    with pytest.raises(TypeError, match=r"with_options\(request_id="):
        build_request(spec, (), {"request_id": "x"})


@by_name(STREAMED)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stream_and_generate_assemble_the_same_events(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    pieces = call(transport, fake.target, spec, streamed=True)
    result = call(transport, fake.target, spec)
    kind = kind_of(spec)
    if kind is Kind.MEDIA:
        assert [type(p) for p in pieces] == [Header, Progress, Progress, Chunk, Chunk, Final]
        assert result.data == b"".join(MEDIA_DATA) and result.seed == 7
        assert result.header.file_name == f"{spec.name}.bin"
    elif kind is Kind.TEXT:
        assert pieces == list(TEXT_PIECES) and result.text == "".join(TEXT_PIECES)
        assert result.finish_reason == "stop"
    elif kind is Kind.TRANSCRIPT:
        assert [p.text for p in pieces] == list(TEXT_PIECES)
        assert all(isinstance(p, Segment) for p in pieces)
        assert result.text == "Hello world" and result.segments == tuple(pieces)
    else:
        assert [p["text"] for p in pieces] == list(TEXT_PIECES)
        assert result.text == spec.join(TEXT_PIECES) and result.pieces == tuple(pieces)
    assert result.request_id == fake.received[-1].metadata[REQUEST_ID]


@every_spec
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_spec_has_a_kind_and_an_accessor_that_works(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    kind = kind_of(spec)  # never a KeyError, whatever the spec's piece
    accessor = f"{kind.value}_calls"
    whole = "create" if kind is Kind.UNARY else "generate"
    if transport == "sync":
        with GenServe(fake.target) as gs:
            calls = getattr(gs, accessor)(spec)
            assert calls.spec is spec and type(calls) is type(gs.calls(spec))
            result = getattr(calls, whole)(**every_field(spec))
    else:

        async def scenario() -> Any:
            async with AsyncGenServe(fake.target) as gs:
                calls = getattr(gs, accessor)(spec)
                assert calls.spec is spec and type(calls) is type(gs.calls(spec))
                return await getattr(calls, whole)(**every_field(spec))

        result = asyncio.run(scenario())
    assert isinstance(result, RESULT_TYPES[kind])


def test_a_text_stream_with_a_new_piece_makes_pieces_calls(fake: FakeServer) -> None:
    caption = dataclasses.replace(TEXT, name="caption", aliases=(), piece="caption")
    assert kind_of(caption) is Kind.PIECES
    with GenServe(fake.target) as gs:
        assert type(gs.calls(caption)) is type(gs.pieces_calls(caption))
        with pytest.raises(TypeError, match="pieces_calls"):
            gs.text_calls(caption)
    assert kind_of(TEXT) is Kind.TEXT  # the original is untouched


@by_name(TEXT_STREAMS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_any_text_stream_can_make_pieces_calls(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    """The generic path, forced on a real spec: pieces as plain fields, the text by the
    spec's own join, the final event's fields, the request ID."""
    fake.final = every_final_field(spec)
    fields = every_field(spec)
    if transport == "sync":
        with GenServe(fake.target) as gs:
            calls = gs.pieces_calls(spec).with_options(request_id="generic")
            pieces = list(calls.stream(**fields))
            result = calls.generate(**fields)
    else:

        async def scenario() -> tuple[list[dict[str, Any]], PiecesResult]:
            async with AsyncGenServe(fake.target) as gs:
                calls = gs.pieces_calls(spec).with_options(request_id="generic")
                streamed = [piece async for piece in calls.stream(**fields)]
                return streamed, await calls.generate(**fields)

        pieces, result = asyncio.run(scenario())
    piece_type = spec.event_type.DESCRIPTOR.fields_by_name[spec.piece].message_type
    expected = [message_to_fields(message_class(piece_type)(text=t)) for t in TEXT_PIECES]
    assert pieces == expected and result.pieces == tuple(expected)
    assert result.text == spec.join(TEXT_PIECES)
    assert result.final == fake.final and result.request_id == "generic"


def test_the_transcript_is_joined_by_its_specs_rule(fake: FakeServer) -> None:
    with GenServe(fake.target) as gs:
        transcript = gs.transcript_calls(TRANSCRIPTION).generate(b"audio")
        generic = gs.pieces_calls(TRANSCRIPTION).generate(b"audio")
    assert transcript.text == generic.text == transcript_text(TEXT_PIECES) == "Hello world"


def test_joined_increments_spell_the_joined_text() -> None:
    texts = [" Hello", " world.", "", "  Again "]
    for join in ("".join, transcript_text):
        assert "".join(joined_increments(join, texts)) == join(texts)
    assert list(joined_increments(transcript_text, ["Hello", " world"])) == ["Hello", " world"]


@by_name(MEDIA)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_progress_reaches_on_progress(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    steps: list[Progress] = []
    call(transport, fake.target, spec, options={"on_progress": steps.append})
    assert [(p.step, p.total_steps) for p in steps] == [(1, 2), (2, 2)]


@by_name(MEDIA)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("streamed", [False, True], ids=["generate", "stream"])
def test_a_file_that_does_not_match_its_sha256_is_refused(
    fake: FakeServer, transport: str, streamed: bool, spec: ModalitySpec[Any, Any]
) -> None:
    fake.corrupt = True
    with pytest.raises(IntegrityError) as error:
        call(transport, fake.target, spec, streamed=streamed, options={"request_id": "bad-sum"})
    assert error.value.code == grpc.StatusCode.DATA_LOSS and error.value.request_id == "bad-sum"


@every_spec
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unavailable_before_any_output_is_retried_with_the_same_request_id(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    fake.script = [Failure(grpc.StatusCode.UNAVAILABLE), Failure(grpc.StatusCode.UNAVAILABLE)]
    result = call(transport, fake.target, spec)
    assert isinstance(result, RESULT_TYPES[kind_of(spec)])
    assert len(fake.received) == 3
    assert len({r.metadata[REQUEST_ID] for r in fake.received}) == 1


@by_name(STREAMED)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unavailable_after_output_is_not_retried(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    fake.script = [Failure(grpc.StatusCode.UNAVAILABLE, after=1)]
    with pytest.raises(UnavailableError):
        call(transport, fake.target, spec)
    assert len(fake.received) == 1  # a retry would repeat output


@every_spec
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resource_exhausted_waits_out_a_short_retry_after_and_reports_a_long_one(
    fake: FakeServer, transport: str, spec: ModalitySpec[Any, Any]
) -> None:
    def full(wait_ms: int) -> Failure:
        return Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=((RETRY_AFTER_MS, str(wait_ms)),)
        )

    fake.script = [full(20)]
    started = time.monotonic()
    call(transport, fake.target, spec)
    assert time.monotonic() - started >= 0.02 and len(fake.received) == 2
    fake.script = [full(60_000)]  # longer than max_retry_after_s: the caller's to decide
    with pytest.raises(ResourceExhaustedError) as error:
        call(transport, fake.target, spec)
    assert error.value.retry_after_s == 60.0 and len(fake.received) == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_api_key_and_request_id_travel_as_metadata(fake: FakeServer, transport: str) -> None:
    options = {"request_id": "mine"}
    call(transport, fake.target, IMAGE, options=options, client_options={"api_key": "k1"})
    metadata = fake.received[0].metadata
    assert metadata[REQUEST_ID] == "mine" and metadata[AUTHORIZATION] == "Bearer k1"


@every_spec
def test_every_name_and_alias_is_a_client_attribute_of_its_kind(
    fake: FakeServer, spec: ModalitySpec[Any, Any]
) -> None:
    for client_type in (GenServe, AsyncGenServe):
        for name in spec.names:
            attribute = name.replace("-", "_")
            assert not hasattr(client_type, attribute), f"{attribute} shadows a modality"
    with GenServe(fake.target) as gs:
        for name in spec.names:
            calls = getattr(gs, name.replace("-", "_"))
            assert calls.spec is spec and gs[name].spec is spec
            assert type(calls) is type(getattr(gs, f"{kind_of(spec).value}_calls")(spec))
        wrong = next(k for k in Kind if k is not kind_of(spec))
        with pytest.raises(TypeError, match=f"{kind_of(spec).value}_calls"):
            getattr(gs, f"{wrong.value}_calls")(spec)
        with pytest.raises(AttributeError, match="nor a modality"):
            _ = gs.no_such_modality


def test_with_options_returns_a_copy(fake: FakeServer) -> None:
    with GenServe(fake.target) as gs:
        plain = gs.image
        timed = plain.with_options(timeout=1.5).with_options(request_id="r")
        assert plain.options.timeout is None and plain.options.request_id is None
        assert (timed.options.timeout, timed.options.request_id) == (1.5, "r")


def test_a_bad_enum_name_is_invalid_before_sending(fake: FakeServer) -> None:
    with GenServe(fake.target) as gs, pytest.raises(InvalidArgumentError, match="format"):
        gs.image.generate("x", format="gif")
    assert not fake.received


def test_the_retry_rule() -> None:
    policy = RetryPolicy(max_retries=2, max_retry_after_s=5)
    unavailable, exhausted = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert policy.delay_s(unavailable, {}, received_anything=False, attempt=0) is not None
    assert policy.delay_s(unavailable, {}, received_anything=True, attempt=0) is None
    assert policy.delay_s(unavailable, {}, received_anything=False, attempt=2) is None
    assert policy.delay_s(exhausted, {"retry-after": "2"}, False, 0) == 2.0
    assert policy.delay_s(exhausted, {"retry-after": "9"}, False, 0) is None  # too long
    assert policy.delay_s(exhausted, {}, False, 0) is None  # no wait named
    assert policy.delay_s(grpc.StatusCode.INTERNAL, {}, False, 0) is None


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.CANCELLED, RequestCancelledError),
    ],
)
def test_error_classes_by_code(code: grpc.StatusCode, error_class: type[GenServeError]) -> None:
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")
    error = from_rpc_error(rpc_error, "rid")
    assert isinstance(error, error_class)
    assert (error.code, error.message, error.request_id) == (code, "details", "rid")
    assert not isinstance(error, asyncio.CancelledError)  # it must not cancel the caller


# -- a real server, every modality ------------------------------------------------------


@pytest.fixture(scope="module")
def gs(tiny_server: ServerThread) -> Iterator[GenServe]:
    with GenServe(f"localhost:{tiny_server.port}") as client:
        yield client


def test_text_stream_and_generate(gs: GenServe) -> None:
    deltas = list(gs.text.stream("What is FastAPI?", max_new_tokens=8, do_sample=False))
    assert len(deltas) >= 3
    result = gs.text.generate("What is FastAPI?", max_new_tokens=8, do_sample=False)
    assert result.text == "".join(deltas)
    assert result.finish_reason == "length" and result.completion_tokens == 8
    assert result.request_id


def test_a_conversation_goes_as_messages(gs: GenServe) -> None:
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    alone = gs.text.generate("What is my name?", max_new_tokens=2, do_sample=False)
    turns = gs.text.generate(
        "What is my name?", messages=messages, max_new_tokens=2, do_sample=False
    )
    assert turns.prompt_tokens > alone.prompt_tokens


def test_image_with_progress_through_the_typed_accessor(gs: GenServe, tmp_path: Path) -> None:
    steps: list[Progress] = []
    image = gs.media_calls(IMAGE).with_options(on_progress=steps.append)
    result = image.generate("a cozy living room", num_inference_steps=3, seed=5)
    assert [p.step for p in steps] == [1, 2, 3]
    assert result.header.mime_type == "image/png" and result.seed == 5
    saved = result.save(tmp_path)
    assert saved.name == result.header.file_name
    assert Image.open(saved).size == (64, 64)


def test_audio_video_mesh_embeddings(gs: GenServe, tmp_path: Path) -> None:
    audio = gs.audio.generate("Hello", preset="v2/en_speaker_9", model="tiny-bark")
    assert soundfile.read(io.BytesIO(audio.data))[1] == audio.header.sample_rate
    source = tmp_path / "room.png"
    source.write_bytes(png_bytes())
    video = gs.video.generate(source, num_frames=3, num_inference_steps=1)  # a path is read
    assert video.header.num_frames == 3 and video.data[4:8] == b"ftyp"
    mesh = gs["3d"].generate("a chair", num_inference_steps=2, format="ply")
    assert mesh.header.face_count > 0 and mesh.data.startswith(b"ply")
    reply = gs.embeddings.create(["one", "two"])
    assert [len(e["values"]) for e in reply["embeddings"]] == [384, 384]


def test_health_models_and_limits(gs: GenServe) -> None:
    assert gs.health() == "SERVING"
    assert gs.health("genserve.v1.ImageService") == "SERVING"
    catalog = gs.catalog()
    assert {m.modality for m in catalog.models} >= {"text", "image", "audio", "video", "mesh"}
    assert set(catalog.limits) == {s.name for s in SPECS}
    assert catalog.limits["image"]["max_steps"] > 0


def test_transcription(gs: GenServe, tmp_path: Path) -> None:
    from tests.speech import ESPEAK, ESPEAK_MISSING, SENTENCE, speak, word_error_rate

    assert any(m.modality == "transcription" for m in gs.models())
    assert ESPEAK is not None, ESPEAK_MISSING
    audio = speak(SENTENCE, tmp_path / "sentence.wav")
    segments = list(gs.transcription.stream(audio))
    transcript = gs.stt.generate(tmp_path / "sentence.wav")
    assert segments and [s.start_s for s in segments] == sorted(s.start_s for s in segments)
    assert word_error_rate(SENTENCE, transcript.text) < 0.3
    assert transcript.language == "en" and transcript.duration_s > 1


def test_stopping_iteration_cancels_on_the_server(gs: GenServe, tiny_server: ServerThread) -> None:
    engine = served_text_engine(tiny_server)
    text = gs.text.with_options(request_id="sdk-cancel")
    for count, _ in enumerate(text.stream("Tell me a story", max_new_tokens=400), start=1):
        if count == 3:
            break
    assert engine.wait_idle(60)
    row = tiny_server.wait_for_usage_row("sdk-cancel")
    assert row["status_code"] == "CANCELLED"


def test_stopping_an_async_stream_cancels_on_the_server(tiny_server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncGenServe(f"localhost:{tiny_server.port}") as client:
            text = client.text.with_options(request_id="sdk-async-cancel")
            stream = text.stream("Tell me a story", max_new_tokens=400)
            count = 0
            async for _ in stream:
                count += 1
                if count == 3:
                    break
            await stream.aclose()

    asyncio.run(scenario())
    assert served_text_engine(tiny_server).wait_idle(60)
    assert tiny_server.wait_for_usage_row("sdk-async-cancel")["status_code"] == "CANCELLED"


def test_async_client_every_modality(tiny_server: ServerThread) -> None:
    async def scenario() -> None:
        async with AsyncGenServe(f"localhost:{tiny_server.port}") as client:
            deltas = [d async for d in client.text.stream("Hi", max_new_tokens=5, do_sample=False)]
            assert len(deltas) >= 2
            text = await client.text.generate("Hi", max_new_tokens=5, do_sample=False)
            assert text.text == "".join(deltas)
            steps: list[Progress] = []
            image = client.media_calls(IMAGE).with_options(on_progress=steps.append)
            result = await image.generate("room", num_inference_steps=2)
            assert len(steps) == 2 and Image.open(io.BytesIO(result.data)).format == "PNG"
            audio = await client.audio.generate("Hello")
            assert audio.header.mime_type == "audio/wav"
            video = await client.video.generate(png_bytes(), num_frames=2, num_inference_steps=1)
            assert video.header.num_frames == 2
            mesh = await client.mesh.generate("a chair", num_inference_steps=2)
            assert mesh.header.mime_type == "model/obj"
            reply = await client.embeddings.create(["x"])
            assert len(reply["embeddings"][0]["values"]) == 384
            assert await client.health() == "SERVING"
            assert await client.models()
            with pytest.raises(InvalidArgumentError):
                await client.text.generate("Hi", top_p=3.0)

    asyncio.run(scenario())


# -- errors from a real server ------------------------------------------------------------


def test_invalid_argument_carries_code_message_and_request_id(gs: GenServe) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        gs.text.with_options(request_id="sdk-bad").generate("Hi", temperature=-1.0)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message.startswith("temperature:")
    assert error.value.request_id == "sdk-bad"


def test_deadline_exceeded(gs: GenServe) -> None:
    with pytest.raises(DeadlineExceededError):
        gs.text.with_options(timeout=0.5).generate(
            "Write a long essay on the history of computing.", max_new_tokens=1500
        )


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with GenServe("localhost:1", max_retries=1) as client, pytest.raises(UnavailableError):
        client.health()


def text_server_with(tmp_path: Path, **changes: Any) -> ServerThread:
    text = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert text is not None
    return ServerThread(make_settings(tmp_path), Manifest(text=(text.model_copy(update=changes),)))


def test_retries_a_model_still_loading_but_not_a_failed_one_nor_invalid_input(
    tmp_path: Path,
) -> None:
    loading = text_server_with(tmp_path / "loading").start(load=False)  # preload not run
    broken = text_server_with(
        tmp_path / "broken", source=str(tmp_path / "none"), gguf_file=None
    ).start()
    try:
        with GenServe(f"localhost:{loading.port}", max_retries=2) as client:
            with pytest.raises(UnavailableError, match="still loading"):
                client.text.with_options(request_id="retried").generate("Hi")
            with pytest.raises(InvalidArgumentError):
                client.text.with_options(request_id="not-retried").generate("")
        loading.server.usage_log.flush()
        assert len(loading.usage_rows("retried")) == 3  # the call and two retries
        assert len(loading.usage_rows("not-retried")) == 1
        # A model that failed to load fails the same way every time: no retry.
        with (
            GenServe(f"localhost:{broken.port}", max_retries=2) as client,
            pytest.raises(FailedPreconditionError, match="failed to load"),
        ):
            client.text.with_options(request_id="failed-model").generate("Hi")
        broken.server.usage_log.flush()
        assert len(broken.usage_rows("failed-model")) == 1
    finally:
        loading.stop()
        broken.stop()


def test_resource_exhausted_when_the_queue_is_full(tmp_path: Path) -> None:
    image_only = Manifest(image=load_manifest(manifest_path("tiny")).image)
    server = ServerThread(
        make_settings(tmp_path, media=MediaLimits(max_queue=1)), image_only
    ).start()
    errors: list[Exception] = []
    started = threading.Event()
    try:
        with GenServe(f"localhost:{server.port}") as client:

            def slow() -> None:
                try:
                    client.image.with_options(on_progress=lambda p: started.set()).generate(
                        "x", num_inference_steps=60, width=128, height=128
                    )
                except Exception as error:
                    errors.append(error)

            threads = [threading.Thread(target=slow) for _ in range(2)]  # one runs, one waits
            for thread in threads:
                thread.start()
            assert started.wait(60)
            # The second one waits in the queue (the threads may start in either order).
            engine = server.server.registry.resolve(Modality.IMAGE, None).engine
            assert engine is not None
            deadline = time.monotonic() + 60
            while engine.stats().queued < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            # max_retries=0: by default the SDK waits out the server's retry-after and tries
            # again, which a queue this busy may well refuse again.
            with (
                GenServe(f"localhost:{server.port}", max_retries=0) as once,
                pytest.raises(ResourceExhaustedError) as refused,
            ):
                once.image.generate("x", num_inference_steps=1)
            assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
            for thread in threads:
                thread.join()
        assert not errors
    finally:
        server.stop()


def test_internal_error(tmp_path: Path) -> None:
    from tests.test_lifecycle import ExplodingEngine

    text = load_manifest(manifest_path("tiny")).text
    server = ServerThread(
        make_settings(tmp_path),
        Manifest(text=text),
        loader_for=lambda modality, spec: lambda spec: ExplodingEngine(),
    ).start()
    try:
        with GenServe(f"localhost:{server.port}") as client, pytest.raises(InternalError) as error:
            client.text.with_options(request_id="sdk-internal").generate("Hi")
        assert "request_id=sdk-internal" in error.value.message
    finally:
        server.stop()


# -- the typed surface, as mypy sees it -----------------------------------------------

TYPED_CALLER = """
from genserve.client import GenServe
from genserve.contract.modalities.image import IMAGE
from genserve.contract.modalities.text import TEXT
from genserve.contract.modalities.transcription import TRANSCRIPTION

with GenServe() as gs:
    image = gs.media_calls(IMAGE).with_options(on_progress=print)
    image.generate("a room", num_inference_steps=3, format="png").save(".")
    image.generate("a room", steps=3)  # error: call-arg
    image.generate(prompt=3)  # error: arg-type
    text: str = gs.text_calls(TEXT).generate("hi", max_new_tokens=3).text
    gs.text_calls(TEXT).generate("hi").data  # error: attr-defined
    joined: str = gs.pieces_calls(TRANSCRIPTION).generate(b"audio", beam_size=2).text
    gs.pieces_calls(TRANSCRIPTION).generate(b"audio", beam_size="2")  # error: arg-type
"""


def test_mypy_checks_calls_against_the_protos_fields(tmp_path: Path) -> None:
    """An editor and mypy see the proto's fields: the installed layout (genserve.client,
    genserve.contract, genserve.v1) is mirrored with links, and a caller checked."""
    from mypy import api

    root = Path(__file__).parent.parent
    package = tmp_path / "genserve"
    package.mkdir()
    (package / "__init__.py").touch()
    links = {
        "v1": "protos/genserve/v1",
        "contract": "protos/genserve/contract",
        "client": "clients",
    }
    for name, source in links.items():
        (package / name).symlink_to(root / source)
    caller = tmp_path / "caller.py"
    caller.write_text(TYPED_CALLER)
    out, _, _ = api.run([
        "--follow-imports=silent", "--ignore-missing-imports", "--no-incremental",
        "--cache-dir", str(tmp_path / "cache"), "--python-version", "3.11", str(caller),
    ])  # fmt: skip
    found = {
        (int(line.split(":")[1]), line.rsplit("[", 1)[1].rstrip("]"))
        for line in out.splitlines()
        if line.startswith(str(caller)) and ": error:" in line
    }
    expected = {
        (number, line.rsplit("error: ", 1)[1])
        for number, line in enumerate(TYPED_CALLER.splitlines(), start=1)
        if "# error:" in line
    }
    assert found == expected, out
