"""OpenAI's chat completions from the server's text stream: the request, the whole answer,
and the streamed chunks (the text relay's SSE shape for this API)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from genserve.bridge.convert import short_name
from genserve.bridge.schemas_openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Usage,
)
from genserve.bridge.streams import Sse, StreamError, TextAnswer, openai_sse_error
from genserve.v1 import text_pb2


def chat_request_pb(body: ChatCompletionRequest) -> text_pb2.TextGenerateRequest:
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    fields: dict[str, Any] = {
        "messages": [
            text_pb2.ChatMessage(role=_role(m.role), content=m.text()) for m in body.messages
        ],
        "system_prompt": "",  # an OpenAI caller sends its own system turn, or none
        "stop": stop,
        "model": body.model,
    }
    max_tokens = body.max_completion_tokens or body.max_tokens
    for name, value in (
        ("max_new_tokens", max_tokens),
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
    ):
        if value is not None:
            fields[name] = value
    return text_pb2.TextGenerateRequest(**fields)


def _role(role: str) -> str:
    return "system" if role == "developer" else role


@dataclass(frozen=True)
class ChatChunks:
    """A streamed chat completion, in OpenAI's chunks (the text relay's SSE shape)."""

    id: str
    created: int
    model: str
    include_usage: bool

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> Sse:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return {"data": json.dumps(body)}

    def delta(self, delta: dict[str, Any], finish: str | None) -> Sse:
        return self.chunk([{"index": 0, "delta": delta, "finish_reason": finish}])

    def opening(self) -> list[Sse]:
        return [self.delta({"role": "assistant", "content": ""}, None)]

    def piece(self, piece: Any) -> Sse:
        return self.delta({"content": piece.text}, None)

    def closing(self, final: Any) -> list[Sse]:
        chunks = [self.delta({}, _openai_finish(final))]
        if self.include_usage:
            chunks.append(self.chunk([], usage=_usage(final.usage).model_dump()))
        return [*chunks, {"data": "[DONE]"}]

    def error(self, error: StreamError) -> Sse:
        return openai_sse_error(error)


def chat_completion(answer: TextAnswer, chunks: ChatChunks) -> ChatCompletion:
    choice = Choice(
        index=0,
        message=AssistantMessage(content=answer.text),
        finish_reason=_openai_finish(answer.final),
    )
    return ChatCompletion(
        id=chunks.id,
        created=chunks.created,
        model=chunks.model,
        choices=[choice],
        usage=_usage(answer.final.usage),
    )


def _usage(usage: text_pb2.TokenUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _openai_finish(final: text_pb2.TextFinal) -> str:
    return "length" if short_name(final, "finish_reason") == "length" else "stop"
