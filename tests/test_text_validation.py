"""Bad text requests get INVALID_ARGUMENT naming the field and the limit; the server goes on."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from genserve.v1 import text_pb2
from tests.server_thread import ServerThread
from tests.text_calls import generate, greedy

MAX_NEW_TOKENS_LIMIT = 2048  # Settings().text.max_new_tokens


def too_long_prompt() -> text_pb2.TextGenerateRequest:
    # ~9k tokens of prompt, within the character limit but beyond SmolLM2's 8192 context.
    return greedy("hello " * 9000, max_new_tokens=16)


BAD_REQUESTS: list[tuple[str, Any, str, str]] = [
    (
        "prompt over the character limit",
        lambda: greedy("hello " * 12000),
        "prompt",
        "limit of 65536",
    ),
    ("empty prompt", lambda: greedy(""), "prompt", "must not be empty"),
    ("blank prompt", lambda: greedy("   "), "prompt", "must not be empty"),
    ("prompt over context", too_long_prompt, "prompt", "context of 8192"),
    ("negative temperature", lambda: greedy(temperature=-0.1), "temperature", "between 0"),
    ("NaN temperature", lambda: greedy(temperature=float("nan")), "temperature", "between 0"),
    ("top_p zero", lambda: greedy(top_p=0.0), "top_p", "(0, 1]"),
    ("top_p above one", lambda: greedy(top_p=1.5), "top_p", "(0, 1]"),
    ("NaN top_p", lambda: greedy(top_p=float("nan")), "top_p", "(0, 1]"),
    (
        "zero max_new_tokens",
        lambda: greedy(max_new_tokens=0),
        "max_new_tokens",
        "between 1 and 2048",
    ),
    (
        "max_new_tokens over the limit",
        lambda: greedy(max_new_tokens=MAX_NEW_TOKENS_LIMIT + 1),
        "max_new_tokens",
        "between 1 and 2048",
    ),
    (
        "too many stop sequences",
        lambda: greedy(stop=["a", "b", "c", "d", "e"]),
        "stop",
        "at most 4",
    ),
    ("empty stop sequence", lambda: greedy(stop=[""]), "stop[0]", "1 to 64 characters"),
    (
        "unknown chat role",
        lambda: text_pb2.TextGenerateRequest(
            messages=[text_pb2.ChatMessage(role="robot", content="hi")]
        ),
        "messages[0].role",
        "must be one of",
    ),
]


@pytest.mark.parametrize(
    ("request_factory", "field", "limit"),
    [pytest.param(f, field, limit, id=name) for name, f, field, limit in BAD_REQUESTS],
)
def test_bad_input_is_invalid_argument(
    channel: grpc.Channel, request_factory: Any, field: str, limit: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        generate(channel, request_factory())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details()
    assert details.startswith(f"{field}:"), details
    assert limit in details, details
    assert "Traceback" not in details


def test_server_keeps_serving_after_bad_input(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError):
        generate(channel, greedy(top_p=7.0))
    assert generate(channel, greedy(max_new_tokens=2)).final is not None


def test_invalid_call_gets_a_usage_row(tiny_server: ServerThread, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError):
        generate(channel, greedy(temperature=-1.0), request_id="bad-temperature")
    row = tiny_server.wait_for_usage_row("bad-temperature")
    assert row["status_code"] == "INVALID_ARGUMENT"
    assert row["successful"] == 0
    assert row["method"] == "/genserve.v1.TextService/Generate"
