"""The synchronous SDK: `GenServe("localhost:50051")`, one sub-client per modality."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.client import defaults, requests
from genserve.client.channel import ConnectionOptions, new_request_id
from genserve.client.errors import from_rpc_error
from genserve.client.results import (
    MediaAssembler,
    MediaResult,
    ModelInfo,
    Progress,
    TextResult,
    model_info,
    model_infos,
    text_result,
)
from genserve.v1 import (
    audio_pb2_grpc,
    embedding_pb2_grpc,
    image_pb2_grpc,
    mesh_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_pb2_grpc,
    video_pb2_grpc,
)

ProgressCallback = Callable[[Progress], None]


class GenServe:
    """A connection to a genserve server. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str = defaults.DEFAULT_TARGET,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        api_key: str | None = None,
        max_message_mb: int = defaults.MAX_MESSAGE_MB,
        max_retries: int = defaults.MAX_RETRIES,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        max_retry_after_s: float = defaults.MAX_RETRY_AFTER_S,
    ) -> None:
        """`tls` (implied by any certificate given): `root_certificates` verify the server
        (default: the system's); `certificate_chain` and `private_key` identify this
        client to a server that asks for client certificates (mTLS)."""
        self.options = ConnectionOptions(
            target,
            tls,
            root_certificates,
            api_key,
            max_message_mb,
            max_retries,
            certificate_chain,
            private_key,
            max_retry_after_s,
        )
        if self.options.tls:
            self._channel = grpc.secure_channel(
                target, self.options.credentials(), self.options.channel_options()
            )
        else:
            self._channel = grpc.insecure_channel(target, self.options.channel_options())
        self.text = TextClient(self)
        self.image = MediaClient(
            self, image_pb2_grpc.ImageServiceStub, requests.image_request, defaults.IMAGE_TIMEOUT_S
        )
        self.audio = MediaClient(
            self, audio_pb2_grpc.AudioServiceStub, requests.audio_request, defaults.AUDIO_TIMEOUT_S
        )
        self.video = VideoClient(
            self, video_pb2_grpc.VideoServiceStub, requests.video_request, defaults.VIDEO_TIMEOUT_S
        )
        self.mesh = MediaClient(
            self, mesh_pb2_grpc.MeshServiceStub, requests.mesh_request, defaults.MESH_TIMEOUT_S
        )
        self.embeddings = EmbeddingClient(self)

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def health(self, service: str = "", timeout: float = defaults.HEALTH_TIMEOUT_S) -> str:
        """SERVING, NOT_SERVING, ... for the server ("") or one service name."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def models(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> list[ModelInfo]:
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        reply = self._unary(stub.ListModels, models_pb2.ListModelsRequest(), timeout)
        return model_infos(reply)

    def load_model(self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S) -> ModelInfo:
        """Loads a model now and keeps it (LoadModel); returns once it is loaded."""
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        reply = self._unary(stub.LoadModel, models_pb2.LoadModelRequest(name=name), timeout)
        return model_info(reply)

    def unload_model(self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S) -> ModelInfo:
        """Refuses new requests for the model, drains those in flight, releases it."""
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        request = models_pb2.UnloadModelRequest(name=name)
        reply = self._unary(stub.UnloadModel, request, timeout)
        return model_info(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GenServe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------

    def _unary(
        self, method: Any, request: Any, timeout: float, request_id: str | None = None
    ) -> Any:
        request_id = request_id or new_request_id()
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout, metadata=self.options.metadata(request_id))
            except grpc.RpcError as error:
                delay = self.options.retry_delay(error, False, attempt)
                if delay is not None:
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise from_rpc_error(error, request_id) from None

    def _stream(self, method: Any, request: Any, timeout: float, request_id: str) -> Iterator[Any]:
        """Server-streaming call with retries before the first event. Leaving the loop
        early (break, close, an exception) cancels the call, and the server stops."""
        attempt = 0
        while True:
            call = method(request, timeout=timeout, metadata=self.options.metadata(request_id))
            received = False
            try:
                for event in call:
                    received = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = self.options.retry_delay(error, received, attempt)
                if delay is not None:
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise from_rpc_error(error, request_id) from None
            finally:
                call.cancel()  # a no-op once the call has finished

    def _media(
        self,
        method: Any,
        request: Any,
        timeout: float,
        request_id: str | None,
        on_progress: ProgressCallback | None,
    ) -> MediaResult:
        request_id = request_id or new_request_id()
        assembler = MediaAssembler(request_id, on_progress)
        for event in self._stream(method, request, timeout, request_id):
            assembler.feed(event)
        assert assembler.result is not None, "a media stream ends with a final event"
        return assembler.result


class _SubClient:
    def __init__(self, client: GenServe) -> None:
        self._client = client


class TextClient(_SubClient):
    def stream(
        self,
        prompt: str | None = None,
        *,
        timeout: float = defaults.TEXT_TIMEOUT_S,
        request_id: str | None = None,
        **params: Any,
    ) -> Iterator[str]:
        """The answer's text, delta by delta, as the model produces it."""
        stub = text_pb2_grpc.TextServiceStub(self._client.channel)
        request = requests.text_request(prompt, **params)
        for event in self._client._stream(
            stub.Generate, request, timeout, request_id or new_request_id()
        ):
            if event.HasField("delta") and event.delta.text:
                yield event.delta.text

    def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float = defaults.TEXT_TIMEOUT_S,
        request_id: str | None = None,
        **params: Any,
    ) -> TextResult:
        """The whole answer, with its finish reason and token counts."""
        stub = text_pb2_grpc.TextServiceStub(self._client.channel)
        request_id = request_id or new_request_id()
        pieces: list[str] = []
        final = None
        # Read to the end of the stream, not just to the final event: leaving early cancels
        # the call, and a call cancelled before its OK status arrives is logged CANCELLED.
        for event in self._client._stream(
            stub.Generate, requests.text_request(prompt, **params), timeout, request_id
        ):
            if event.HasField("delta"):
                pieces.append(event.delta.text)
            else:
                final = event.final
        if final is not None:
            return text_result(pieces, final, request_id)
        raise AssertionError("a text stream ends with a final event")


class MediaClient(_SubClient):
    """generate(...) -> MediaResult for one media modality; keyword arguments are the
    request's fields (see clients.requests), unset ones take the server's defaults."""

    def __init__(
        self, client: GenServe, stub_class: Any, build_request: Any, timeout: float
    ) -> None:
        super().__init__(client)
        self._stub = stub_class(client.channel)
        self._build_request = build_request
        self._timeout = timeout

    def generate(
        self,
        *args: Any,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> MediaResult:
        request = self._build_request(*args, **params)
        return self._client._media(
            self._stub.Generate, request, timeout or self._timeout, request_id, on_progress
        )


class VideoClient(MediaClient):
    def generate(  # type: ignore[override]
        self, image: bytes | str | Path, *args: Any, **kwargs: Any
    ) -> MediaResult:
        """Animates an image (bytes, or the path of a PNG/JPEG/WebP file)."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return super().generate(data, *args, **kwargs)


class EmbeddingClient(_SubClient):
    def create(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        timeout: float = defaults.EMBED_TIMEOUT_S,
        request_id: str | None = None,
    ) -> list[list[float]]:
        """Unit-length vectors, one per text."""
        stub = embedding_pb2_grpc.EmbeddingServiceStub(self._client.channel)
        reply = self._client._unary(
            stub.Embed, requests.embed_request(texts, model=model), timeout, request_id
        )
        return [list(e.values) for e in reply.embeddings]
