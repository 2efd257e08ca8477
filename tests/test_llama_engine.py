"""The llama.cpp text engine on its own, on the tiny profile's real GGUF file: batching,
seeds, freeing cells, the bounded queue and the shared prefix, driven with a real event
loop (the served behaviour is covered by the text tests, which run on this engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from genserve.server.errors import InvalidArgument, ResourceExhausted, Unavailable
from genserve.server.manifest import Modality, load_manifest, manifest_path
from genserve.server.text.llama_engine import (
    LlamaCppTextEngine,
    LlamaEngineConfig,
    load_llama_engine,
)
from genserve.server.text.types import (
    ChatTurn,
    FinishReason,
    SamplingParams,
    TextDelta,
    TextFinal,
    TextRequest,
)
from tests.server_thread import MODEL_STORE

WAIT_S = 60.0
SYSTEM = "You are a helpful assistant. You answer in one short paragraph, in plain English."
PROMPTS = (
    "What is FastAPI?",
    "Explain how rain forms.",
    "What is a prime number?",
    "Describe the sea.",
)


def tiny_gguf() -> Path:
    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert spec is not None and spec.engine == "llama.cpp" and spec.gguf_file
    return Path(spec.resolved_source(MODEL_STORE)) / spec.gguf_file


def make_engine(**overrides: int) -> LlamaCppTextEngine:
    config = {"kv_cache_tokens": 4096, "max_queue": 16, "prefill_chunk_tokens": 64} | overrides
    return load_llama_engine(tiny_gguf(), LlamaEngineConfig(**config), name="test-llama")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppTextEngine]:
    engine = make_engine()
    yield engine
    assert engine.close()


def ask(
    prompt: str,
    *,
    max_new_tokens: int = 24,
    sample: bool = False,
    seed: int = 7,
    stop: tuple[str, ...] = (),
    system: str = SYSTEM,
) -> TextRequest:
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=0.8,
        top_k=40,
        top_p=0.9,
        seed=seed,
        stop=stop,
    )
    return TextRequest(
        messages=(ChatTurn("system", system), ChatTurn("user", prompt)), params=params
    )


async def collect(engine: LlamaCppTextEngine, request: TextRequest) -> tuple[str, TextFinal]:
    text, final = [], None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            final = event
    assert final is not None
    return "".join(text), final


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


def test_batched_greedy_equals_solo_greedy() -> None:
    """Each sequence's logits are bit-identical alone or among others in one llama_decode
    (prefill chunks and decode rows alike), so greedy text is too. Each phase runs in a
    fresh engine and no answer ends early: once a sequence's cells are freed mid-batch,
    llama.cpp's unified cache may place another's later tokens in them, below its earlier
    ones, and flash attention then sums in another order; that last-bit difference can
    flip a near-tie (see the README)."""
    alone, together = make_engine(), make_engine(prefill_chunk_tokens=32)
    try:
        solo = [run(collect(alone, ask(p))) for p in PROMPTS]

        async def batch() -> list[tuple[str, TextFinal]]:
            return await asyncio.gather(*(collect(together, ask(p)) for p in PROMPTS))

        batched = run(batch())
    finally:
        assert alone.close() and together.close()
    assert [text for text, _ in batched] == [text for text, _ in solo]
    assert all(final.completion_tokens == 24 for _, final in batched)
    assert len({text for text, _ in solo}) == len(PROMPTS)  # really different requests


def test_a_seed_reproduces_alone_and_in_a_batch(engine: LlamaCppTextEngine) -> None:
    alone = run(collect(engine, ask("Tell me a story.", sample=True, seed=1234)))

    async def among_others() -> tuple[tuple[str, TextFinal], ...]:
        return await asyncio.gather(
            collect(engine, ask("Write a poem.", sample=True, seed=5)),
            collect(engine, ask("Tell me a story.", sample=True, seed=1234)),
            collect(engine, ask("Tell me a story.", sample=True, seed=99)),
        )

    _, again, other_seed = run(among_others())
    assert again[0] == alone[0] and again[1].seed == 1234
    assert other_seed[0] != alone[0]


def test_stop_sequence_and_max_tokens(engine: LlamaCppTextEngine) -> None:
    full, _ = run(collect(engine, ask("What is FastAPI?", max_new_tokens=24)))
    stop = full.split()[3]  # a word from the middle of the greedy answer
    text, final = run(collect(engine, ask("What is FastAPI?", max_new_tokens=24, stop=(stop,))))
    assert final.finish_reason is FinishReason.STOP and stop not in text
    assert full.startswith(text)
    _, short = run(collect(engine, ask("What is FastAPI?", max_new_tokens=5)))
    assert short.finish_reason is FinishReason.LENGTH and short.completion_tokens == 5


def test_the_shared_prefix_is_prefilled_once(engine: LlamaCppTextEngine) -> None:
    system = "You are a careful assistant for a shared-prefix test. " * 3
    requests = [ask(p, max_new_tokens=4, system=system) for p in PROMPTS]
    prompt_lengths, prefix_lengths = zip(*(engine.encode(r) for r in requests), strict=True)
    prefix = prefix_lengths[0]
    assert prefix > 16 and set(prefix_lengths) == {prefix}
    before = engine.prefill_counters()

    async def together() -> list[tuple[str, TextFinal]]:
        return await asyncio.gather(*(collect(engine, r) for r in requests))

    results = run(together())
    after = engine.prefill_counters()
    assert [final.prompt_tokens for _, final in results] == [len(p) for p in prompt_lengths]
    # the system prompt went through the model once; every request reused its cells
    own_tokens = sum(len(p) - prefix for p in prompt_lengths)
    assert after.computed - before.computed == prefix + own_tokens
    assert after.reused - before.reused == prefix * len(requests)
    # a later request with the same system prompt computes only its own turn
    again = ask("One more question?", max_new_tokens=2, system=system)
    tokens, _ = engine.encode(again)
    run(collect(engine, again))
    assert engine.prefill_counters().computed - after.computed == len(tokens) - prefix


def test_per_sequence_kv_streams_give_the_same_greedy_text_and_reuse_the_prefix() -> None:
    """kv_unified off: each sequence a KV stream of its own, as llama-server's slots, and
    a shared prefix copied into each stream rather than shared. Greedy text in a batch
    equals the one pool's, alone, and the system prompt is still prefilled once."""
    system = "You are a careful assistant for a shared-prefix test. " * 3
    pooled, streams = make_engine(), make_engine(unified=False, max_running=4)
    try:
        solo = [run(collect(pooled, ask(p, system=system))) for p in PROMPTS]
        prefix = streams.encode(ask(PROMPTS[0], system=system))[1]

        async def batch() -> list[tuple[str, TextFinal]]:
            return await asyncio.gather(*(collect(streams, ask(p, system=system)) for p in PROMPTS))

        batched = run(batch())
        reused = streams.prefill_counters().reused
        assert streams.context_length < pooled.context_length  # a slice of the cells each
    finally:
        assert pooled.close() and streams.close()
    assert [text for text, _ in batched] == [text for text, _ in solo]
    assert reused == prefix * len(PROMPTS)


def test_a_cancel_frees_the_cells_for_the_next_request() -> None:
    # 600 cells: one 400-token request at a time. The second can only start in the cells
    # the cancelled one gave back.
    engine = make_engine(kv_cache_tokens=600)
    try:

        async def cancel_then_ask() -> tuple[int, str, TextFinal]:
            stream = engine.generate(ask("Tell me a long story.", max_new_tokens=360))
            async for event in stream:
                if isinstance(event, TextDelta) and event.completion_tokens >= 3:
                    break
            await stream.aclose()
            held_after_cancel = -1
            for _ in range(500):
                if engine.stats().in_flight == 0:
                    held_after_cancel = engine.kv_cells_reserved()
                    break
                await asyncio.sleep(0.01)
            text, final = await collect(engine, ask("Tell me a long story.", max_new_tokens=360))
            return held_after_cancel, text, final

        held, text, final = run(cancel_then_ask())
        prefix_cells = engine.encode(ask("x"))[1]
        assert held == prefix_cells  # only the cached system prompt keeps cells
        assert final.finish_reason in (FinishReason.LENGTH, FinishReason.STOP) and text
        assert engine.stats().cancelled == 1
    finally:
        assert engine.close()


def test_a_late_arrival_joins_a_running_batch(engine: LlamaCppTextEngine) -> None:
    async def late() -> tuple[TextFinal, TextFinal, bool]:
        first = asyncio.ensure_future(collect(engine, ask("Tell me a story.", max_new_tokens=80)))
        while engine.stats().in_flight == 0:
            await asyncio.sleep(0.005)
        _, joiner = await collect(engine, ask("Say hello.", max_new_tokens=4))
        still_running = not first.done()
        _, leader = await first
        return leader, joiner, still_running

    leader, joiner, still_running = run(late())
    assert still_running  # the short one finished while the long one was decoding
    assert joiner.completion_tokens == 4 and leader.completion_tokens == 80
    assert joiner.queued_ms < 5000


def test_a_full_queue_is_resource_exhausted() -> None:
    # 500 cells hold one 400-token request; one more may wait; the third is refused.
    engine = make_engine(kv_cache_tokens=500, max_queue=1)
    try:

        async def crowd() -> tuple[Exception | None, list[TextFinal]]:
            running = [
                asyncio.ensure_future(collect(engine, ask("Tell me a story.", max_new_tokens=350)))
            ]
            while engine.stats().in_flight == 0:
                await asyncio.sleep(0.005)
            running.append(
                asyncio.ensure_future(collect(engine, ask("And another.", max_new_tokens=350)))
            )
            while engine.stats().queued == 0:
                await asyncio.sleep(0.005)
            refused: Exception | None = None
            try:
                await collect(engine, ask("One too many.", max_new_tokens=350))
            except ResourceExhausted as error:
                refused = error
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            return refused, []

        refused, _ = run(crowd())
        assert isinstance(refused, ResourceExhausted) and "waiting" in str(refused)
        assert engine.wait_idle(WAIT_S)
    finally:
        assert engine.close()


def test_a_request_larger_than_the_context_is_invalid(engine: LlamaCppTextEngine) -> None:
    with pytest.raises(InvalidArgument, match="context"):
        run(collect(engine, ask("hi", max_new_tokens=engine.context_length)))


def test_close_ends_running_requests_and_the_thread() -> None:
    engine = make_engine()

    async def close_mid_stream() -> TextFinal | None:
        final = None
        async for event in engine.generate(ask("Tell me a story.", max_new_tokens=300)):
            if isinstance(event, TextDelta) and event.completion_tokens == 2:
                assert await asyncio.to_thread(engine.close, WAIT_S)
            if isinstance(event, TextFinal):
                final = event
        return final

    final = run(close_mid_stream())
    assert final is not None and final.finish_reason is FinishReason.CANCELLED
    assert not engine.ready and engine.stats().in_flight == 0


def test_a_caller_that_leaves_the_queue_gives_its_place_back() -> None:
    # 500 cells: one 390-token request runs; the next cannot start behind it, so the two
    # after it wait in a queue of 2. The last one leaving frees its place at once, not
    # when the head finally starts.
    engine = make_engine(kv_cache_tokens=500, max_queue=2)
    try:

        async def leave_the_queue() -> tuple[int, int]:
            story = ask("Tell me a story.", max_new_tokens=350)
            running = asyncio.ensure_future(collect(engine, story))
            while engine.stats().in_flight == 0:
                await asyncio.sleep(0.005)
            head = asyncio.ensure_future(collect(engine, story))
            leaver = asyncio.ensure_future(collect(engine, story))
            while engine.stats().queued < 2:
                await asyncio.sleep(0.005)
            leaver.cancel()
            await asyncio.gather(leaver, return_exceptions=True)
            while engine.stats().queued > 1:
                await asyncio.sleep(0.005)
            stats = engine.stats()  # one snapshot: both counts from the same moment
            queued_after, running_after = stats.queued, stats.in_flight
            for task in (running, head):
                task.cancel()
            await asyncio.gather(running, head, return_exceptions=True)
            return queued_after, running_after

        queued, running = run(leave_the_queue())
        assert (queued, running) == (1, 1)  # the head still waits; the leaver is gone
        assert engine.wait_idle(WAIT_S)
    finally:
        assert engine.close()


def test_a_closed_engine_refuses_new_requests() -> None:
    engine = make_engine()
    assert engine.close()
    with pytest.raises(Unavailable):
        run(collect(engine, ask("Hello?")))


def test_a_long_prompt_is_not_starved_by_a_stream_of_short_ones() -> None:
    """The scheduler's prefill shares, stepped as the engine steps them: a 500-token prompt,
    and two new 40-token prompts arriving at every step (more than a step's 64 tokens).
    Shortest-first alone would never feed the long one; it must be in within 2 x 500 / 64
    steps."""
    from genserve.server.engine.channel import EventChannel
    from genserve.server.text.llama_engine import _prompt_shares, _Sequence

    budget = 64

    def sequence(tokens: int, started: float) -> _Sequence:
        params = ask("x").params
        return _Sequence([0] * tokens, 0, params, EventChannel(1), started, started=started)

    async def steps() -> tuple[_Sequence, int]:  # (channels need a loop)
        long = sequence(500, started=0.0)
        prefilling = [long]
        for step in range(1, 100):
            prefilling += [sequence(40, started=float(step)) for _ in range(2)]
            shares = _prompt_shares(prefilling, budget)
            assert sum(shares.values()) <= budget
            for s, take in shares.items():
                s.cursor += take
            prefilling = [s for s in prefilling if s.cursor < len(s.prompt)]
            if long not in prefilling:
                break
        return long, step

    long, step = asyncio.run(steps())
    assert long.cursor == 500
    assert step <= 2 * 500 // budget + 1, step
