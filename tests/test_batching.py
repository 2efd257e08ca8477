"""Continuous batching: concurrent text requests share forward passes, each one's
parameters hold, and each one's output is what it would be alone."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from genserve.v1 import text_pb2, text_pb2_grpc
from tests.greedy_path import greedy_paths
from tests.text_calls import TextResult, generate, greedy

# Every answer runs past 24 tokens, and none comes near a tie on its greedy path (checked
# below on the weights). A batch may sum in another order than a request alone (on the
# llama.cpp engine a sequence that ends early frees cells that another's later tokens may
# take, below its earlier ones), and a last-bit difference flips a near-tie: "What is
# FastAPI?", whose two likeliest 16th tokens are 0.013 apart in logits, once read "It's"
# batched and "It provides" alone.
PROMPTS = [
    "What is a database?",
    "What is a prime number?",
    "What is gravity?",
    "Describe the water cycle.",
]

# The smallest top-2 logit gap these prompts may have; their own is 0.20 or more. Batching's
# last-bit differences are orders of magnitude below it.
NO_NEAR_TIE = 0.1
LONGEST_ANSWER = 24  # the most tokens a test here compares


def test_the_prompts_come_near_no_tie_on_the_path_the_server_takes(channel: grpc.Channel) -> None:
    """What the batched-equals-alone tests rest on, on the weights they run: the greedy
    path computed from the logits is the server's own answer, and no step is near a tie."""
    paths = greedy_paths(PROMPTS, LONGEST_ANSWER)
    for prompt, path in paths.items():
        assert len(path.gaps) == LONGEST_ANSWER, (prompt, path.text)
        assert min(path.gaps) >= NO_NEAR_TIE, (prompt, min(path.gaps), path.text)
        served = generate(channel, greedy(prompt, max_new_tokens=LONGEST_ANSWER)).text
        assert served == path.text, (prompt, served, path.text)


def concurrently(calls: list[Callable[[], TextResult]]) -> list[TextResult]:
    results: list[TextResult | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_batched_greedy_equals_unbatched_greedy(channel: grpc.Channel) -> None:
    alone = [generate(channel, greedy(p, max_new_tokens=12)).text for p in PROMPTS]

    def ask(prompt: str) -> Callable[[], TextResult]:
        return lambda: generate(channel, greedy(prompt, max_new_tokens=12))

    together = concurrently([ask(p) for p in PROMPTS])
    assert [r.text for r in together] == alone


def test_per_request_max_tokens_and_stop_sequences_hold_in_a_batch(channel: grpc.Channel) -> None:
    reference = generate(channel, greedy(PROMPTS[0], max_new_tokens=12)).text
    stop_word = reference.split()[2]
    together = concurrently(
        [
            lambda: generate(channel, greedy(PROMPTS[0], max_new_tokens=12, stop=[stop_word])),
            lambda: generate(channel, greedy(PROMPTS[1], max_new_tokens=3)),
            lambda: generate(channel, greedy(PROMPTS[2], max_new_tokens=9)),
        ]
    )
    stopped, short, longer = together
    assert stopped.final is not None and stopped.final.finish_reason == text_pb2.FINISH_REASON_STOP
    assert stopped.text == reference[: reference.index(stop_word)]
    assert short.final is not None and short.final.usage.completion_tokens == 3
    assert longer.final is not None and longer.final.usage.completion_tokens == 9


def test_same_seed_same_sample_alone_or_batched(channel: grpc.Channel) -> None:
    sampled = text_pb2.TextGenerateRequest(
        prompt=PROMPTS[0], max_new_tokens=10, do_sample=True, temperature=1.0, seed=77
    )
    alone = generate(channel, sampled).text
    together = concurrently(
        [lambda: generate(channel, sampled), lambda: generate(channel, greedy(PROMPTS[1]))]
    )
    assert together[0].text == alone


def test_a_cancel_in_the_middle_leaves_the_others_intact(channel: grpc.Channel) -> None:
    alone = [generate(channel, greedy(p, max_new_tokens=16)) for p in PROMPTS[:2]]
    stub = text_pb2_grpc.TextServiceStub(channel)
    cancelled_call = stub.Generate(greedy("Tell me a long story", max_new_tokens=300))

    def cancel_after_two_deltas() -> TextResult:
        seen = 0
        for response in cancelled_call:
            seen += response.HasField("delta")
            if seen == 2:
                cancelled_call.cancel()
                break
        return TextResult()

    results = concurrently(
        [
            cancel_after_two_deltas,
            lambda: generate(channel, greedy(PROMPTS[0], max_new_tokens=16)),
            lambda: generate(channel, greedy(PROMPTS[1], max_new_tokens=16)),
        ]
    )
    assert [r.text for r in results[1:]] == [r.text for r in alone]
    assert [r.final for r in results[1:]] != [None, None]
    for batched, single in zip(results[1:], alone, strict=True):
        assert batched.final is not None and single.final is not None
        assert batched.final.finish_reason == single.final.finish_reason
        assert batched.final.usage.completion_tokens == single.final.usage.completion_tokens
    assert cancelled_call.code() == grpc.StatusCode.CANCELLED


def test_late_arrivals_join_a_running_batch(channel: grpc.Channel) -> None:
    """A request sent while another is decoding joins it between steps, and both
    outputs are still their unbatched ones."""
    alone = [generate(channel, greedy(p, max_new_tokens=24)).text for p in PROMPTS[2:]]
    stub = text_pb2_grpc.TextServiceStub(channel)
    first = stub.Generate(greedy(PROMPTS[2], max_new_tokens=24))
    stream = iter(first)
    pieces = [next(stream).delta.text]  # the first request is decoding now
    late = generate(channel, greedy(PROMPTS[3], max_new_tokens=24))
    pieces += [r.delta.text for r in stream if r.HasField("delta")]
    assert "".join(pieces) == alone[0]
    assert late.text == alone[1]
