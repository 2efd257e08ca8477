"""The asyncio SDK: `AsyncGenServe("localhost:50051")`, the same shape as GenServe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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


class AsyncGenServe:
    """An asyncio connection. Use as `async with`, or await close()."""

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
            self._channel = grpc.aio.secure_channel(
                target, self.options.credentials(), self.options.channel_options()
            )
        else:
            self._channel = grpc.aio.insecure_channel(target, self.options.channel_options())
        self.text = AsyncTextClient(self)
        self.image = AsyncMediaClient(
            self, image_pb2_grpc.ImageServiceStub, requests.image_request, defaults.IMAGE_TIMEOUT_S
        )
        self.audio = AsyncMediaClient(
            self, audio_pb2_grpc.AudioServiceStub, requests.audio_request, defaults.AUDIO_TIMEOUT_S
        )
        self.video = AsyncVideoClient(
            self, video_pb2_grpc.VideoServiceStub, requests.video_request, defaults.VIDEO_TIMEOUT_S
        )
        self.mesh = AsyncMediaClient(
            self, mesh_pb2_grpc.MeshServiceStub, requests.mesh_request, defaults.MESH_TIMEOUT_S
        )
        self.embeddings = AsyncEmbeddingClient(self)

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def health(self, service: str = "", timeout: float = defaults.HEALTH_TIMEOUT_S) -> str:
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._unary(stub.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def models(self, timeout: float = defaults.HEALTH_TIMEOUT_S) -> list[ModelInfo]:
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        reply = await self._unary(stub.ListModels, models_pb2.ListModelsRequest(), timeout)
        return model_infos(reply)

    async def load_model(
        self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S
    ) -> ModelInfo:
        """Loads a model now and keeps it (LoadModel); returns once it is loaded."""
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        reply = await self._unary(stub.LoadModel, models_pb2.LoadModelRequest(name=name), timeout)
        return model_info(reply)

    async def unload_model(
        self, name: str, timeout: float = defaults.MODEL_LOAD_TIMEOUT_S
    ) -> ModelInfo:
        """Refuses new requests for the model, drains those in flight, releases it."""
        stub = models_pb2_grpc.ModelServiceStub(self._channel)
        request = models_pb2.UnloadModelRequest(name=name)
        reply = await self._unary(stub.UnloadModel, request, timeout)
        return model_info(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGenServe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _unary(
        self, method: Any, request: Any, timeout: float, request_id: str | None = None
    ) -> Any:
        request_id = request_id or new_request_id()
        attempt = 0
        while True:
            try:
                return await method(
                    request, timeout=timeout, metadata=self.options.metadata(request_id)
                )
            except grpc.RpcError as error:
                delay = self.options.retry_delay(error, False, attempt)
                if delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                raise from_rpc_error(error, request_id) from None

    async def _stream(
        self, method: Any, request: Any, timeout: float, request_id: str
    ) -> AsyncIterator[Any]:
        """Retries before the first event; leaving early cancels the call on the server."""
        attempt = 0
        while True:
            call = method(request, timeout=timeout, metadata=self.options.metadata(request_id))
            received = False
            try:
                async for event in call:
                    received = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = self.options.retry_delay(error, received, attempt)
                if delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                raise from_rpc_error(error, request_id) from None
            finally:
                call.cancel()


class AsyncTextClient:
    def __init__(self, client: AsyncGenServe) -> None:
        self._client = client

    async def stream(
        self,
        prompt: str | None = None,
        *,
        timeout: float = defaults.TEXT_TIMEOUT_S,
        request_id: str | None = None,
        **params: Any,
    ) -> AsyncIterator[str]:
        stub = text_pb2_grpc.TextServiceStub(self._client.channel)
        request = requests.text_request(prompt, **params)
        async for event in self._client._stream(
            stub.Generate, request, timeout, request_id or new_request_id()
        ):
            if event.HasField("delta") and event.delta.text:
                yield event.delta.text

    async def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float = defaults.TEXT_TIMEOUT_S,
        request_id: str | None = None,
        **params: Any,
    ) -> TextResult:
        stub = text_pb2_grpc.TextServiceStub(self._client.channel)
        request_id = request_id or new_request_id()
        pieces: list[str] = []
        final = None
        # Read to the end of the stream, not just to the final event: leaving early cancels
        # the call, and a call cancelled before its OK status arrives is logged CANCELLED.
        async for event in self._client._stream(
            stub.Generate, requests.text_request(prompt, **params), timeout, request_id
        ):
            if event.HasField("delta"):
                pieces.append(event.delta.text)
            else:
                final = event.final
        if final is not None:
            return text_result(pieces, final, request_id)
        raise AssertionError("a text stream ends with a final event")


class AsyncMediaClient:
    def __init__(
        self, client: AsyncGenServe, stub_class: Any, build_request: Any, timeout: float
    ) -> None:
        self._client = client
        self._stub = stub_class(client.channel)
        self._build_request = build_request
        self._timeout = timeout

    async def generate(
        self,
        *args: Any,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> MediaResult:
        request_id = request_id or new_request_id()
        assembler = MediaAssembler(request_id, on_progress)
        request = self._build_request(*args, **params)
        async for event in self._client._stream(
            self._stub.Generate, request, timeout or self._timeout, request_id
        ):
            assembler.feed(event)
        assert assembler.result is not None, "a media stream ends with a final event"
        return assembler.result


class AsyncVideoClient(AsyncMediaClient):
    async def generate(  # type: ignore[override]
        self, image: bytes | str | Path, *args: Any, **kwargs: Any
    ) -> MediaResult:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return await super().generate(data, *args, **kwargs)


class AsyncEmbeddingClient:
    def __init__(self, client: AsyncGenServe) -> None:
        self._client = client

    async def create(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        timeout: float = defaults.EMBED_TIMEOUT_S,
        request_id: str | None = None,
    ) -> list[list[float]]:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(self._client.channel)
        reply = await self._client._unary(
            stub.Embed, requests.embed_request(texts, model=model), timeout, request_id
        )
        return [list(e.values) for e in reply.embeddings]
