"""TextService: converts requests at the edge, streams the engine's events back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext

from genserve.contract.modalities.text import TEXT, TextParams
from genserve.server.errors import InvalidArgument
from genserve.server.registry import ModelRegistry
from genserve.server.request_context import current_call_details
from genserve.server.servicers.request import RequestConverter, admit_request
from genserve.server.settings import Settings, TextLimits
from genserve.server.text.types import (
    ChatTurn,
    FinishReason,
    SamplingParams,
    TextEvent,
    TextFinal,
    TextRequest,
)
from genserve.v1 import common_pb2, text_pb2, text_pb2_grpc

GREEDY_BELOW = 1e-5

FINISH_REASON_TO_PB = {
    FinishReason.STOP: text_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: text_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: text_pb2.FINISH_REASON_CANCELLED,
}


class TextServicer(text_pb2_grpc.TextServiceServicer):
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self._registry = registry
        self._limits = settings.text
        self._convert = RequestConverter(TEXT, registry, settings)

    async def Generate(
        self,
        request: text_pb2.TextGenerateRequest,
        context: ServicerContext[Any, Any],
    ) -> AsyncIterator[text_pb2.TextGenerateResponse]:
        entry, defaults = self._convert.resolve(request)
        params = await self._convert.params(request, defaults)
        text_request = text_request_from(params, self._limits)
        admit_request(TEXT, entry, text_request, context)
        call = current_call_details()
        call.model = entry.name
        async with self._registry.use(entry.modality, entry.name) as engine:
            async for event in engine.generate(text_request):
                if isinstance(event, TextFinal):
                    call.prompt_tokens = event.prompt_tokens
                    call.queued_ms = event.queued_ms
                    call.inference_ms = event.inference_ms
                call.completion_tokens = event.completion_tokens
                yield text_event_to_pb(event)


def text_request_from(params: TextParams, limits: TextLimits) -> TextRequest:
    """The text hook: validated params (every field within its bounds) to the engine's
    request, the conversation as chat turns with the system prompt first."""
    sampling = SamplingParams(
        max_new_tokens=params.max_new_tokens,
        # Temperature 0 means greedy, as in the OpenAI API; below GREEDY_BELOW, dividing the
        # logits by it overflows, and greedy is what it means anyway (vLLM does the same).
        do_sample=params.do_sample and params.temperature >= GREEDY_BELOW,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop=tuple(params.stop),
    )
    return TextRequest(messages=chat_turns(params, limits), params=sampling)


def chat_turns(params: TextParams, limits: TextLimits) -> tuple[ChatTurn, ...]:
    if not params.prompt.strip() and not params.messages:
        raise InvalidArgument("prompt", "must not be empty (or give messages)")
    turns: list[ChatTurn] = []
    if params.system_prompt and not any(m.role == "system" for m in params.messages):
        turns.append(ChatTurn("system", params.system_prompt))
    turns.extend(ChatTurn(message.role, message.content) for message in params.messages)
    if params.prompt.strip():
        turns.append(ChatTurn("user", params.prompt))
    total_chars = sum(len(t.content) for t in turns)
    if total_chars > limits.max_prompt_chars:
        raise InvalidArgument(
            "prompt", f"{total_chars} characters exceed the limit of {limits.max_prompt_chars}"
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
