"""Adapters to an OpenAI-compatible server (OpenAI, llama-server, vLLM, another genserve
bridge): chat streamed token by token, embeddings, images and speech, as our events."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from httpx_sse import EventSource

from genserve.contract.events import MediaEvent
from genserve.contract.modalities.audio import AudioParams
from genserve.contract.modalities.image import ImageFormat, ImageParams
from genserve.server.errors import Unavailable
from genserve.server.media.embedding import Embeddings
from genserve.server.text.types import FinishReason, TextDelta, TextEvent, TextFinal, TextRequest
from genserve.server.upstream.engine import Adapter
from genserve.server.upstream.http import UpstreamHttp
from genserve.server.upstream.media_stream import MediaTiming, media_events, one_piece, reencoded

# Characters per token, to count a prompt the upstream did not (English text, BPE).
CHARS_PER_TOKEN = 4
SEED_MODULUS = 2**32  # llama.cpp's seeds are 32-bit; OpenAI's accept that range too
HEALTH_PATH = "/models"
# OpenAI's finish reasons of a whole answer; any other (content_filter, abort) cut it short.
FINISHED = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.STOP,
    "function_call": FinishReason.STOP,
}


def chat_body(model: str, request: TextRequest, send_top_k: bool) -> dict[str, Any]:
    params = request.params
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": turn.role, "content": turn.content} for turn in request.messages],
        "max_tokens": params.max_new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": params.seed % SEED_MODULUS,
        "temperature": params.temperature if params.do_sample else 0.0,
    }
    if params.do_sample:
        body["top_p"] = params.top_p
        if send_top_k:  # not OpenAI's (it refuses unknown fields); llama-server's and vLLM's
            body["top_k"] = params.top_k
    if params.stop:
        body["stop"] = list(params.stop)
    return body


async def chat(http: UpstreamHttp, request: TextRequest) -> AsyncGenerator[TextEvent, None]:
    """Streamed chat. Usage comes from the upstream when it reports it
    (include_usage); otherwise each content delta counts as one token and the prompt is
    estimated from its length."""
    assert http.spec.model is not None
    clock = time.perf_counter()
    completion = 0
    finish: str | None = None
    usage: dict[str, Any] | None = None
    body = chat_body(http.spec.model, request, http.spec.send_top_k)
    async with http.stream("POST", "/chat/completions", body) as reply:
        async for event in http.timed(reply, EventSource(reply.response).aiter_sse()):
            if event.data.strip() == "[DONE]":
                break
            chunk = _parse(http, event.data)
            if isinstance(chunk.get("error"), dict | str):
                raise Unavailable(f"model {http.model}: the upstream failed mid-stream")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    completion += 1
                    yield TextDelta(content, completion)
                finish = choice.get("finish_reason") or finish
    if finish is None:  # the stream stopped without saying why: it was cut short
        raise Unavailable(f"model {http.model}: the upstream's stream ended before its end")
    if finish not in FINISHED:  # content_filter, vLLM's abort: cut short upstream
        raise Unavailable(f"model {http.model}: the upstream ended the answer early ({finish})")
    prompt_tokens = math.ceil(sum(len(t.content) for t in request.messages) / CHARS_PER_TOKEN)
    if usage:
        prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
        completion = int(usage.get("completion_tokens") or completion)
    yield TextFinal(
        finish_reason=FINISHED[finish],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        seed=request.params.seed,
        queued_ms=0.0,
        inference_ms=(time.perf_counter() - clock) * 1000,
    )


async def embeddings(http: UpstreamHttp, texts: list[str]) -> AsyncGenerator[Embeddings, None]:
    body = {"model": http.spec.model, "input": texts, "encoding_format": "float"}
    reply = await http.fetch_json("POST", "/embeddings", body)
    try:
        ordered = sorted(reply["data"], key=lambda item: item["index"])
        vectors = [[float(v) for v in item["embedding"]] for item in ordered]
    except (KeyError, TypeError, ValueError):
        raise Unavailable(f"model {http.model}: the upstream's embeddings are malformed") from None
    if len(vectors) != len(texts):
        raise Unavailable(
            f"model {http.model}: asked for {len(texts)} embeddings, the upstream sent "
            f"{len(vectors)}"
        )
    usage = reply.get("usage") or {}
    estimate = math.ceil(sum(len(text) for text in texts) / CHARS_PER_TOKEN)
    yield Embeddings(vectors=vectors, prompt_tokens=int(usage.get("prompt_tokens") or estimate))


def image_adapter(chunk_size: int) -> Adapter[ImageParams, MediaEvent]:
    async def images(http: UpstreamHttp, params: ImageParams) -> AsyncGenerator[MediaEvent, None]:
        """OpenAI's images API answers whole (b64_json); we stream it on in chunks."""
        started = time.perf_counter()
        body = {
            "model": http.spec.model,
            "prompt": params.prompt,
            "size": f"{params.width}x{params.height}",
            "n": 1,
            "response_format": "b64_json",
        }
        reply = await http.fetch_json("POST", "/images/generations", body)
        try:
            data = base64.b64decode(reply["data"][0]["b64_json"], validate=True)
        except (KeyError, IndexError, TypeError, ValueError):
            raise Unavailable(f"model {http.model}: the upstream sent no image") from None
        if params.format is not ImageFormat.PNG:
            data = reencoded(data, params.format)
        timing = MediaTiming(params.seed, started)
        async for event in media_events(one_piece(data), chunk_size, "image", None, timing):
            yield event

    return images


def speech_adapter(chunk_size: int) -> Adapter[AudioParams, MediaEvent]:
    async def speech(http: UpstreamHttp, params: AudioParams) -> AsyncGenerator[MediaEvent, None]:
        """The upstream's WAV streamed on as it arrives."""
        clock = time.perf_counter()
        body = {
            "model": http.spec.model,
            "input": params.prompt,
            "voice": http.spec.voice or params.preset,
            "response_format": "wav",
        }
        async with http.stream("POST", "/audio/speech", body) as reply:
            data = http.timed(reply, reply.response.aiter_bytes())
            declared = reply.response.headers.get("content-type")
            timing = MediaTiming(params.seed, clock)
            async for event in media_events(data, chunk_size, "speech", declared, timing):
                yield event

    return speech


def _parse(http: UpstreamHttp, data: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError:
        raise Unavailable(f"model {http.model}: the upstream sent an event not in JSON") from None
    if not isinstance(parsed, dict):
        raise Unavailable(f"model {http.model}: the upstream sent an unexpected event")
    return parsed
