"""TextService end to end: a real server, the real SmolLM2 model, the generated stubs."""

from __future__ import annotations

import threading

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genserve.v1 import text_pb2, text_pb2_grpc
from tests.server_thread import ServerThread, settled_stats
from tests.text_calls import generate, greedy, request, served_text_engine

ENGINE_IDLE_TIMEOUT_S = 30


def test_tokens_arrive_in_several_messages_before_the_end(channel: grpc.Channel) -> None:
    result = generate(channel, greedy(max_new_tokens=16))
    non_empty = [d for d in result.deltas if d]
    assert len(non_empty) >= 5, result.deltas
    assert result.final is not None
    assert result.final.usage.completion_tokens == 16
    assert result.final.usage.prompt_tokens > 0
    assert result.final.usage.total_tokens == 16 + result.final.usage.prompt_tokens
    assert result.text.strip()


def test_greedy_decoding_is_reproducible(channel: grpc.Channel) -> None:
    first = generate(channel, greedy(max_new_tokens=10))
    second = generate(channel, greedy(max_new_tokens=10))
    assert first.text == second.text


def test_same_seed_same_sample(channel: grpc.Channel) -> None:
    sampled = request(max_new_tokens=10, do_sample=True, temperature=1.0, seed=1234)
    first = generate(channel, sampled)
    second = generate(channel, sampled)
    assert first.text == second.text
    assert first.final is not None and first.final.seed == 1234


def test_seed_is_reported_when_the_server_picks_it(channel: grpc.Channel) -> None:
    result = generate(channel, request(max_new_tokens=2))
    assert result.final is not None and result.final.seed != 0


def test_finish_reason_length(channel: grpc.Channel) -> None:
    result = generate(channel, greedy(max_new_tokens=3))
    assert result.final is not None
    assert result.final.finish_reason == text_pb2.FINISH_REASON_LENGTH
    assert result.final.usage.completion_tokens == 3


def test_finish_reason_stop_at_a_stop_sequence(channel: grpc.Channel) -> None:
    unconstrained = generate(channel, greedy(max_new_tokens=12)).text
    words = unconstrained.split()
    assert len(words) >= 4, unconstrained
    stop_word = words[3]
    expected = unconstrained[: unconstrained.index(stop_word)]

    result = generate(channel, greedy(max_new_tokens=12, stop=[stop_word]))
    assert result.final is not None
    assert result.final.finish_reason == text_pb2.FINISH_REASON_STOP
    assert result.text == expected
    assert stop_word not in result.text


def test_finish_reason_stop_at_end_of_sequence(channel: grpc.Channel) -> None:
    result = generate(
        channel,
        greedy("Reply with one word: what colour is the sky?", max_new_tokens=48, system_prompt=""),
    )
    assert result.final is not None
    assert result.final.finish_reason == text_pb2.FINISH_REASON_STOP
    assert result.final.usage.completion_tokens < 48


def test_chat_messages_are_accepted(channel: grpc.Channel) -> None:
    req = text_pb2.TextGenerateRequest(
        messages=[
            text_pb2.ChatMessage(role="user", content="My name is Ada."),
            text_pb2.ChatMessage(role="assistant", content="Hello Ada!"),
            text_pb2.ChatMessage(role="user", content="What is my name?"),
        ],
        max_new_tokens=8,
        do_sample=False,
    )
    result = generate(channel, req)
    assert result.final is not None and result.final.usage.prompt_tokens > 20
    assert result.text.strip()


def test_cancelling_the_rpc_stops_the_model(
    tiny_server: ServerThread, channel: grpc.Channel
) -> None:
    engine = served_text_engine(tiny_server)
    before = settled_stats(engine)
    stub = text_pb2_grpc.TextServiceStub(channel)
    call = stub.Generate(greedy(max_new_tokens=400), metadata=(("x-request-id", "cancel-me"),))
    seen = 0
    for response in call:
        if response.HasField("delta"):
            seen = response.delta.completion_tokens
        if seen >= 3:
            call.cancel()
            break

    assert engine.wait_idle(ENGINE_IDLE_TIMEOUT_S), "the model kept generating after cancel"
    after = engine.stats()
    assert after.cancelled == before.cancelled + 1
    # The model stopped within a few decoding steps of the cancel, far short of 400.
    assert after.tokens_generated - before.tokens_generated <= seen + 10, after
    # and operators see the same counts on /metrics
    metrics = model_metrics(tiny_server, engine.name)
    assert metrics["genserve_model_tokens_decoded_total"] == after.tokens_generated
    assert metrics["genserve_model_cancelled_requests_total"] == after.cancelled
    row = tiny_server.wait_for_usage_row("cancel-me")
    assert row["status_code"] == "CANCELLED" and row["successful"] == 0
    # and the model is free for the next request
    assert generate(channel, greedy(max_new_tokens=2)).final is not None


def test_deadline_exceeded(tiny_server: ServerThread, channel: grpc.Channel) -> None:
    engine = served_text_engine(tiny_server)
    before = settled_stats(engine)
    with pytest.raises(grpc.RpcError) as error:
        generate(channel, greedy(max_new_tokens=400), request_id="too-slow", timeout=1.0)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert engine.wait_idle(ENGINE_IDLE_TIMEOUT_S)
    after = engine.stats()
    assert after.cancelled == before.cancelled + 1
    assert after.tokens_generated - before.tokens_generated < 400
    row = tiny_server.wait_for_usage_row("too-slow")
    assert row["status_code"] == "DEADLINE_EXCEEDED"


def test_concurrent_requests_each_get_their_own_answer(channel: grpc.Channel) -> None:
    prompts = ["What is FastAPI?", "Name a colour.", "What is 2 + 2?"]
    alone = {p: generate(channel, greedy(p, max_new_tokens=6)).text for p in prompts}
    together: dict[str, str] = {}

    def run(prompt: str) -> None:
        together[prompt] = generate(channel, greedy(prompt, max_new_tokens=6)).text

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def model_metrics(server: ServerThread, model: str) -> dict[str, float]:
    """The server's per-model samples on its /metrics port, by sample name."""
    text = httpx.get(f"http://127.0.0.1:{server.server.metrics_port}/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == model
    }
