"""TextService: converts requests at the edge, streams the engine's events back."""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from genserve.server.errors import InvalidArgument
from genserve.server.manifest import Modality
from genserve.server.modalities import ROW_BY_MODALITY
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.servicers.media import ModelDefaults, admit_request
from genserve.server.settings import TextLimits
from genserve.server.text.defaults import TextDefaults
from genserve.server.text.types import (
    ChatTurn,
    FinishReason,
    SamplingParams,
    TextEvent,
    TextFinal,
    TextRequest,
)
from genserve.v1 import common_pb2, text_pb2, text_pb2_grpc

CHAT_ROLES = frozenset({"system", "user", "assistant"})
GREEDY_BELOW = 1e-5

FINISH_REASON_TO_PB = {
    FinishReason.STOP: text_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: text_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: text_pb2.FINISH_REASON_CANCELLED,
}


class TextServicer(text_pb2_grpc.TextServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: TextLimits) -> None:
        self._registry = registry
        self._limits = limits
        self._defaults = ModelDefaults(ROW_BY_MODALITY[Modality.TEXT], registry)

    async def Generate(
        self,
        request: text_pb2.TextGenerateRequest,
        context: ServicerContext[Any, Any],
    ) -> AsyncIterator[text_pb2.TextGenerateResponse]:
        entry, defaults = self._defaults.resolve(request)
        assert isinstance(defaults, TextDefaults)
        text_request = text_request_from_pb(request, defaults, self._limits)
        admit_request(ROW_BY_MODALITY[Modality.TEXT], entry, text_request, context)
        call = current_call_details()
        call.model = entry.name
        async with self._registry.use(Modality.TEXT, entry.name) as engine:
            async for event in engine.generate(text_request):
                if isinstance(event, TextFinal):
                    call.prompt_tokens = event.prompt_tokens
                    call.queued_ms = event.queued_ms
                    call.inference_ms = event.inference_ms
                call.completion_tokens = event.completion_tokens
                yield text_event_to_pb(event)


def text_request_from_pb(
    request: text_pb2.TextGenerateRequest,
    defaults: TextDefaults,
    limits: TextLimits,
) -> TextRequest:
    """Validates a request against the limits and fills unset fields from the defaults."""
    messages = _chat_turns(request, defaults, limits)

    max_new_tokens = (
        request.max_new_tokens if request.HasField("max_new_tokens") else defaults.max_new_tokens
    )
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(
            "max_new_tokens", f"must be between 1 and {limits.max_new_tokens}, got {max_new_tokens}"
        )

    temperature = request.temperature if request.HasField("temperature") else defaults.temperature
    if math.isnan(temperature) or not 0 <= temperature <= limits.max_temperature:
        raise InvalidArgument(
            "temperature", f"must be between 0 and {limits.max_temperature}, got {temperature}"
        )

    top_k = request.top_k if request.HasField("top_k") else defaults.top_k
    if top_k > limits.max_top_k:
        raise InvalidArgument(
            "top_k", f"must be between 0 (off) and {limits.max_top_k}, got {top_k}"
        )

    top_p = request.top_p if request.HasField("top_p") else defaults.top_p
    if math.isnan(top_p) or not 0 < top_p <= 1:
        raise InvalidArgument("top_p", f"must be in (0, 1], got {top_p}")

    stop = tuple(request.stop)
    if len(stop) > limits.max_stop_sequences:
        raise InvalidArgument(
            "stop", f"at most {limits.max_stop_sequences} stop sequences, got {len(stop)}"
        )
    for i, sequence in enumerate(stop):
        if not sequence or len(sequence) > limits.max_stop_sequence_chars:
            raise InvalidArgument(
                f"stop[{i}]", f"must be 1 to {limits.max_stop_sequence_chars} characters long"
            )

    do_sample = request.do_sample if request.HasField("do_sample") else defaults.do_sample
    seed = request.seed if request.HasField("seed") else secrets.randbits(63)
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        # Temperature 0 means greedy, as in the OpenAI API; below GREEDY_BELOW, dividing the
        # logits by it overflows, and greedy is what it means anyway (vLLM does the same).
        do_sample=do_sample and temperature >= GREEDY_BELOW,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
    )
    return TextRequest(messages=messages, params=params)


def _chat_turns(
    request: text_pb2.TextGenerateRequest,
    defaults: TextDefaults,
    limits: TextLimits,
) -> tuple[ChatTurn, ...]:
    if not request.prompt.strip() and not request.messages:
        raise InvalidArgument("prompt", "must not be empty (or give messages)")
    if len(request.messages) > limits.max_messages:
        raise InvalidArgument(
            "messages", f"at most {limits.max_messages} messages, got {len(request.messages)}"
        )
    system_prompt = (
        request.system_prompt if request.HasField("system_prompt") else defaults.system_prompt
    )
    turns: list[ChatTurn] = []
    if system_prompt and not any(m.role == "system" for m in request.messages):
        turns.append(ChatTurn("system", system_prompt))
    for i, message in enumerate(request.messages):
        if message.role not in CHAT_ROLES:
            raise InvalidArgument(
                f"messages[{i}].role", f"must be one of {sorted(CHAT_ROLES)}, got {message.role!r}"
            )
        if not message.content.strip():
            raise InvalidArgument(f"messages[{i}].content", "must not be empty")
        turns.append(ChatTurn(message.role, message.content))
    if request.prompt.strip():
        turns.append(ChatTurn("user", request.prompt))
    total_chars = sum(len(t.content) for t in turns)
    if total_chars > limits.max_prompt_chars:
        raise InvalidArgument(
            "prompt",
            f"{total_chars} characters exceed the limit of {limits.max_prompt_chars}",
        )
    return tuple(turns)


def text_event_to_pb(event: TextEvent) -> text_pb2.TextGenerateResponse:
    if isinstance(event, TextFinal):
        return text_pb2.TextGenerateResponse(
            final=text_pb2.TextFinal(
                finish_reason=FINISH_REASON_TO_PB[event.finish_reason],
                usage=text_pb2.TokenUsage(
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    total_tokens=event.prompt_tokens + event.completion_tokens,
                ),
                timings=common_pb2.Timings(
                    queued_ms=event.queued_ms,
                    inference_ms=event.inference_ms,
                    replica=event.replica,
                ),
                seed=event.seed,
            )
        )
    return text_pb2.TextGenerateResponse(
        delta=text_pb2.TextDelta(text=event.text, completion_tokens=event.completion_tokens)
    )
