"""Adapters to an OpenAI-compatible server (OpenAI, llama-server, vLLM, another genserve
bridge): chat streamed token by token, embeddings, images and speech, as our events."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from genserve.contract.events import MediaEvent
from genserve.contract.modalities.audio import AudioParams
from genserve.contract.modalities.image import ImageFormat, ImageParams
from genserve.server.errors import InvalidArgument, Unavailable
from genserve.server.media.embedding import Embeddings
from genserve.server.settings import Settings
from genserve.server.text.types import FinishReason, TextDelta, TextEvent, TextFinal, TextRequest
from genserve.server.upstream.engine import Adapter
from genserve.server.upstream.http import UpstreamHttp
from genserve.server.upstream.media_checks import (
    ImageCheck,
    WavCheck,
    base64_limit,
    image_bytes_limit,
)
from genserve.server.upstream.media_stream import MediaTiming, media_events, one_piece, reencoded
from genserve.server.upstream.sse import event_data

# Characters per token, to count a prompt the upstream did not (English text, BPE).
CHARS_PER_TOKEN = 4
SEED_MODULUS = 2**32  # llama.cpp's seeds are 32-bit; OpenAI's accept that range too
HEALTH_PATH = "/models"
# Events an upstream may send after the last token we take (its finish, its usage) before
# we stop reading: one that ignores max_tokens is cut off there.
TRAILING_EVENTS = 8
# No model's context is longer: a usage figure past it is not a count.
MAX_REPORTED_TOKENS = 10_000_000
MAX_EMBEDDING_REPLY_BYTES = 64 * 1024 * 1024
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
    """Streamed chat. Usage comes from the upstream when it reports it (include_usage)
    and it makes sense; otherwise each content delta counts as one token and the prompt
    is estimated from its length. Reading stops at the caller's max_new_tokens, whatever
    the upstream does with its max_tokens: the connection closes and the answer ends
    LENGTH."""
    assert http.spec.model is not None
    clock = time.perf_counter()
    most = request.params.max_new_tokens
    completion = trailing = 0
    cut = False
    finish: str | None = None
    usage: Any = None
    body = chat_body(http.spec.model, request, http.spec.send_top_k)
    async with http.stream("POST", "/chat/completions", body) as reply:
        events = event_data(reply.response.aiter_bytes(), http.spec.max_event_bytes, http.model)
        async for data in http.timed(reply, events):
            if data.strip() == "[DONE]":
                break
            chunk = _parse(http, data)
            if isinstance(chunk.get("error"), dict | str):
                raise Unavailable(f"model {http.model}: the upstream failed mid-stream")
            usage = chunk.get("usage") or usage
            for content, said in _choices(http, chunk):
                if content and completion >= most:
                    cut = True  # more than we asked for
                    break
                if content:
                    completion += 1
                    yield TextDelta(content, completion)
                finish = said or finish
            if completion >= most:  # the rest may be its finish and usage, not much more
                trailing += 1
                if cut or trailing > TRAILING_EVENTS:
                    finish = "length"
                    break
    if finish is None:  # the stream stopped without saying why: it was cut short
        raise Unavailable(f"model {http.model}: the upstream's stream ended before its end")
    if finish not in FINISHED:  # content_filter, vLLM's abort: cut short upstream
        raise Unavailable(f"model {http.model}: the upstream ended the answer early ({finish})")
    estimate = math.ceil(sum(len(t.content) for t in request.messages) / CHARS_PER_TOKEN)
    prompt_tokens, completion = _usage(
        http,
        usage,
        [("prompt_tokens", estimate, MAX_REPORTED_TOKENS), ("completion_tokens", completion, most)],
    )
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
    reply = await http.fetch_json(
        "POST", "/embeddings", body, MAX_EMBEDDING_REPLY_BYTES, "a batch of embeddings"
    )
    try:
        ordered = sorted(reply["data"], key=lambda item: item["index"])
        vectors = [[float(v) for v in item["embedding"]] for item in ordered]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise Unavailable(f"model {http.model}: the upstream's embeddings are malformed") from None
    if len(vectors) != len(texts):
        raise Unavailable(
            f"model {http.model}: asked for {len(texts)} embeddings, the upstream sent "
            f"{len(vectors)}"
        )
    if any(not all(map(math.isfinite, vector)) for vector in vectors):
        raise Unavailable(f"model {http.model}: the upstream's embeddings are malformed (inf)")
    estimate = math.ceil(sum(len(text) for text in texts) / CHARS_PER_TOKEN)
    (prompt_tokens,) = _usage(
        http, reply.get("usage"), [("prompt_tokens", estimate, MAX_REPORTED_TOKENS)]
    )
    yield Embeddings(vectors=vectors, prompt_tokens=prompt_tokens)


def image_adapter(settings: Settings) -> Adapter[ImageParams, MediaEvent]:
    chunk_size, max_pixels = settings.media.chunk_size, settings.image.max_pixels

    async def images(http: UpstreamHttp, params: ImageParams) -> AsyncGenerator[MediaEvent, None]:
        """OpenAI's images API answers whole (b64_json); we check it is the PNG asked for,
        then stream it on in chunks (re-encoded first if the caller asked another format)."""
        started = time.perf_counter()
        body = {
            "model": http.spec.model,
            "prompt": params.prompt,
            "size": f"{params.width}x{params.height}",
            "n": 1,
            "response_format": "b64_json",
        }
        limit = base64_limit(image_bytes_limit(params.width, params.height))
        what = f"a {params.width}x{params.height} image"
        reply = await http.fetch_json("POST", "/images/generations", body, limit, what)
        try:
            data = base64.b64decode(reply["data"][0]["b64_json"], validate=True)
        except (KeyError, IndexError, TypeError, ValueError):
            raise Unavailable(f"model {http.model}: the upstream sent no image") from None
        check = ImageCheck(http.model, "PNG", params.width, params.height, max_pixels)
        check.feed(data)
        check.finish()
        if params.format is not ImageFormat.PNG:
            data = reencoded(data, params.format)
        timing = MediaTiming(params.seed, started)
        async for event in media_events(one_piece(data), chunk_size, "image", None, timing):
            yield event

    return images


def speech_adapter(settings: Settings) -> Adapter[AudioParams, MediaEvent]:
    chunk_size, max_seconds = settings.media.chunk_size, settings.audio.max_audio_s

    async def speech(http: UpstreamHttp, params: AudioParams) -> AsyncGenerator[MediaEvent, None]:
        """The upstream's WAV streamed on as it arrives, checked as it goes."""
        if params.sample_rate is not None:
            # OpenAI's speech API has no rate to ask for, and a stream is not resampled here.
            raise InvalidArgument(
                "sample_rate",
                f"model {http.model} speaks at its upstream's own rate; leave sample_rate unset",
            )
        clock = time.perf_counter()
        body: dict[str, Any] = {
            "model": http.spec.model,
            "input": params.prompt,
            "voice": http.spec.voice or params.preset,
            "response_format": "wav",
        }
        if params.speed != 1.0:  # asked for: the upstream says if its voice can't
            body["speed"] = params.speed
        async with http.stream("POST", "/audio/speech", body) as reply:
            data = http.timed(reply, reply.response.aiter_bytes())
            declared = reply.response.headers.get("content-type")
            timing = MediaTiming(params.seed, clock)
            check = WavCheck(http.model, max_seconds)
            async for event in media_events(data, chunk_size, "speech", declared, timing, check):
                yield event

    return speech


def _parse(http: UpstreamHttp, data: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise Unavailable(f"model {http.model}: the upstream sent an event not in JSON") from None
    if not isinstance(parsed, dict):
        raise _unexpected(http)
    return parsed


def _unexpected(http: UpstreamHttp) -> Unavailable:
    return Unavailable(f"model {http.model}: the upstream sent an unexpected event")


def _choices(http: UpstreamHttp, chunk: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """Each choice's (new text, finish reason), checked: anything but text where text
    goes is the upstream's fault, and must never reach a proto field."""
    choices = chunk.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise _unexpected(http)
    read = []
    for choice in choices:
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else 0  # 0: not text
        finish = choice.get("finish_reason")
        if not isinstance(content, str | None) or not isinstance(finish, str | None):
            raise _unexpected(http)
        if content and not _is_utf8(content):  # a lone surrogate, from a \ud800 escape
            raise Unavailable(f"model {http.model}: the upstream sent text that is not UTF-8")
        read.append((content, finish))
    return read


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usage(http: UpstreamHttp, usage: Any, counts: list[tuple[str, int, int]]) -> list[int]:
    """Each (field, our own count, its most) as the upstream reports it when it is a count
    (a whole number from 0 to its most: more new tokens than were asked is no count); our
    own where it is missing, or, with a warning logged once, where it makes no sense."""
    reported = usage if isinstance(usage, dict) else {}
    values = []
    for name, own, most in counts:
        value = reported.get(name)
        if value is None:
            values.append(own)
        elif type(value) is int and 0 <= value <= most:
            values.append(value)
        else:
            values.append(own)
            http.warn_once(
                "usage",
                f"the upstream reports usage numbers that make no sense ({usage!r:.200}); "
                "genserve counts the tokens itself",
            )
    return values
