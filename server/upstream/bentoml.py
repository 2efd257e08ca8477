"""Adapters to a BentoML service (`@bentoml.service`, HTTP): an image API that returns a
file, and a generator API that streams text. BentoML takes the API's arguments as one JSON
object and streams a generator's pieces as a chunked text body."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict

from genserve.contract.events import MediaEvent
from genserve.contract.modalities.image import ImageFormat, ImageParams
from genserve.server.errors import Unavailable
from genserve.server.settings import Settings
from genserve.server.text.types import FinishReason, TextDelta, TextEvent, TextFinal, TextRequest
from genserve.server.upstream.engine import Adapter
from genserve.server.upstream.http import UpstreamHttp
from genserve.server.upstream.media_checks import ImageCheck
from genserve.server.upstream.media_stream import (
    MediaTiming,
    media_events,
    one_piece,
    reencoded,
)
from genserve.server.upstream.openai import CHARS_PER_TOKEN, SEED_MODULUS

HEALTH_PATH = "/readyz"


def image_adapter(settings: Settings) -> Adapter[ImageParams, MediaEvent]:
    chunk_size, max_pixels = settings.media.chunk_size, settings.image.max_pixels

    async def image(http: UpstreamHttp, params: ImageParams) -> AsyncGenerator[MediaEvent, None]:
        """The service's PNG, checked as it streams on (or whole, before re-encoding)."""
        assert http.spec.endpoint is not None
        clock = time.perf_counter()
        # The BentoML service we target (chapter 3's example) takes these; no negative prompt.
        body = {
            "prompt": params.prompt,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "width": params.width,
            "height": params.height,
            "seed": params.seed % SEED_MODULUS,
        }
        timing = MediaTiming(params.seed, clock)
        check = ImageCheck(http.model, "PNG", params.width, params.height, max_pixels)
        async with http.stream("POST", http.spec.endpoint, body) as reply:
            declared = reply.response.headers.get("content-type")
            data = http.timed(reply, reply.response.aiter_bytes())
            if params.format is not ImageFormat.PNG:  # the service sends PNG
                whole = bytearray()
                async for piece in data:
                    check.feed(piece)
                    whole += piece
                check.finish()
                data = one_piece(reencoded(bytes(whole), params.format))
                async for event in media_events(data, chunk_size, "image", declared, timing):
                    yield event
                return
            async for event in media_events(data, chunk_size, "image", declared, timing, check):
                yield event

    return image


async def text(http: UpstreamHttp, request: TextRequest) -> AsyncGenerator[TextEvent, None]:
    """A generator API's pieces as deltas (each piece counts as one token: BentoML reports
    no usage). A body that ends is a finished answer; the length cap says which end."""
    assert http.spec.endpoint is not None
    clock = time.perf_counter()
    params = request.params
    body = {
        "messages": [asdict(turn) for turn in request.messages],
        "max_new_tokens": params.max_new_tokens,
        "do_sample": params.do_sample,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed % SEED_MODULUS,
    }
    completion = 0
    async with http.stream("POST", http.spec.endpoint, body) as reply:
        # aiter_text decodes UTF-8 incrementally: a character split across pieces waits.
        async for piece in http.timed(reply, reply.response.aiter_text()):
            if piece and completion >= params.max_new_tokens:
                break  # more than was asked for: the connection closes here
            if piece:
                completion += 1
                yield TextDelta(piece, completion)
    if completion == 0 and params.max_new_tokens > 0:
        raise Unavailable(f"model {http.model}: the upstream answered nothing")
    prompt = math.ceil(sum(len(turn.content) for turn in request.messages) / CHARS_PER_TOKEN)
    yield TextFinal(
        finish_reason=FinishReason.LENGTH
        if completion >= params.max_new_tokens
        else FinishReason.STOP,
        prompt_tokens=prompt,
        completion_tokens=completion,
        seed=params.seed,
        queued_ms=0.0,
        inference_ms=(time.perf_counter() - clock) * 1000,
    )
