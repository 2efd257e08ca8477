"""Chunked prefill in the batching engine: a long prompt joining a running batch goes in a
chunk per step, between the running rows' decoding steps, and joins them once it is in.
Driven directly on the tiny random-weight model of test_engines (no server); every check
counts forward passes, none measures time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from genserve.server.engine.contract import EngineStats
from genserve.server.text.batching_engine import BatchingTextEngine
from genserve.server.text.token_stream import encode_chat
from genserve.server.text.types import TextRequest
from tests import test_engines
from tests.test_engines import (
    PROMPTS,
    WAIT_S,
    Completion,
    complete,
    greedy,
    idle,
    in_engine,
    until,
)

# The tiny random-weight model, its tokenizer and one torch thread, as in test_engines.
model = test_engines.model
tokenizer = test_engines.tokenizer
one_torch_thread = test_engines.one_torch_thread

CHUNK = 32
LONG_PROMPT_TOKENS = 400  # 13 chunks of 32, the last one 16 wide


class Pass(NamedTuple):
    batch: int
    width: int  # new positions
    attended: int  # positions in the attention mask: the cache's and the new ones


Hold = tuple[Callable[[Pass], bool], Callable[[], bool]]


class PassLog:
    """A forward pre-hook on the real model: records every pass; holds the first pass that
    matches a hold's condition until its release holds (each hold once); can fail one."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.passes: list[Pass] = []
        self.holds: list[Hold] = []
        self.fail_when: Callable[[Pass], bool] | None = None
        self._handle = model.register_forward_pre_hook(self._before, with_kwargs=True)

    def widths(self) -> list[int]:
        """Widths of the prefill passes (more than one new position)."""
        return [p.width for p in self.passes if p.width > 1]

    def remove(self) -> None:
        self._handle.remove()

    def _before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        batch, width = kwargs["input_ids"].shape
        this = Pass(batch, width, kwargs["attention_mask"].shape[1])
        self.passes.append(this)
        for hold in self.holds:
            when, release = hold
            if when(this):
                self.holds.remove(hold)
                deadline = time.monotonic() + WAIT_S
                while not release() and time.monotonic() < deadline:
                    time.sleep(0.002)
                break
        if self.fail_when is not None and self.fail_when(this):
            self.fail_when = None
            raise RuntimeError("forward failed")


@pytest.fixture
def log(model: LlamaForCausalLM) -> Iterator[PassLog]:
    log = PassLog(model)
    yield log
    log.remove()


def engine_with(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, chunk: int
) -> BatchingTextEngine:
    return BatchingTextEngine(
        model,
        tokenizer,
        name="tiny",
        max_queue=8,
        max_batch_size=8,
        max_wait_ms=0,
        max_batch_tokens=4096,
        prefill_chunk_tokens=chunk,
    )


@pytest.fixture
def engine(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> Iterator[BatchingTextEngine]:
    engine = engine_with(model, tokenizer, CHUNK)
    yield engine
    engine.close()


def long_request(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 12) -> TextRequest:
    """A prompt of exactly LONG_PROMPT_TOKENS tokens (one per letter, plus start and end)."""
    letters = " ".join(string.ascii_lowercase[i % 26] for i in range(LONG_PROMPT_TOKENS - 2))
    request = greedy(letters, max_new_tokens)
    assert prompt_tokens(tokenizer, request) == LONG_PROMPT_TOKENS
    return request


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, request: TextRequest) -> int:
    return len(encode_chat(tokenizer, request))


def first_decode_waits_for(engine: BatchingTextEngine, requests: int) -> Hold:
    """Holds the running stream's first decoding step until `requests` are in the engine,
    so the joiner arrives mid-batch however the threads are scheduled."""
    return (lambda p: p.width == 1, lambda: in_engine(engine) == requests)


def test_a_long_prompt_joins_a_chunk_per_step_between_the_running_rows_steps(
    engine: BatchingTextEngine, tokenizer: PreTrainedTokenizerBase, log: PassLog
) -> None:
    running_request, long = greedy(PROMPTS[0], max_new_tokens=40), long_request(tokenizer)

    async def scenario() -> list[Completion]:
        alone = [await complete(engine.generate(r)) for r in (running_request, long)]
        log.passes.clear()
        log.holds.append(first_decode_waits_for(engine, 2))
        running = asyncio.create_task(complete(engine.generate(running_request)))
        await until(lambda: engine.stats().in_flight == 1)
        joining = asyncio.create_task(complete(engine.generate(long)))
        together = list(await asyncio.wait_for(asyncio.gather(running, joining), WAIT_S))
        assert together == alone  # greedy output is the same alone or joined
        assert await idle(engine)
        return together

    running, joined = asyncio.run(scenario())
    assert (running.completion_tokens, joined.completion_tokens) == (40, 12)

    short = prompt_tokens(tokenizer, running_request)
    assert log.passes[0] == Pass(1, short, short)  # the running row's own prefill
    chunks = [i for i, p in enumerate(log.passes) if p.width > 1][1:]
    # No forward takes more than a chunk of the joiner's prompt, and each is its own row.
    assert [log.passes[i] for i in chunks] == [
        Pass(1, min(CHUNK, LONG_PROMPT_TOKENS - start), min(start + CHUNK, LONG_PROMPT_TOKENS))
        for start in range(0, LONG_PROMPT_TOKENS, CHUNK)
    ]
    # The running row decodes between every two of them, on its own.
    for before, after in itertools.pairwise(chunks):
        between = log.passes[before + 1 : after]
        assert between and all((p.batch, p.width) == (1, 1) for p in between)
    # Once the prompt is in, the two decode together ...
    assert log.passes[chunks[-1] + 1].batch == 2
    # ... and when the long one has left, its positions stop being attended to.
    assert log.passes[-1].batch == 1 and log.passes[-1].attended < LONG_PROMPT_TOKENS


@pytest.mark.parametrize("chunk", [1, 7, CHUNK])
def test_a_chunked_prefill_gives_the_output_of_a_whole_one(
    chunk: int, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, log: PassLog
) -> None:
    """Positions and masks line up across chunk boundaries: the same greedy tokens."""
    requests = [long_request(tokenizer), greedy(PROMPTS[2], max_new_tokens=20)]

    def outputs(chunk: int) -> list[Completion]:
        engine = engine_with(model, tokenizer, chunk)

        async def scenario() -> list[Completion]:
            return [await complete(engine.generate(r)) for r in requests]

        try:
            return asyncio.run(scenario())
        finally:
            engine.close()

    whole = outputs(10**6)
    assert max(log.widths()) == LONG_PROMPT_TOKENS
    log.passes.clear()
    assert outputs(chunk) == whole
    assert max(log.widths() or [1]) <= chunk


def test_cancelling_a_request_mid_prefill_stops_its_prefill(
    engine: BatchingTextEngine, tokenizer: PreTrainedTokenizerBase, log: PassLog
) -> None:
    """The joiner's caller leaves during its third chunk: no chunk after that one runs, it
    never joins the running row (which carries on, unchanged), and nothing stays counted."""
    running_request, long = greedy(PROMPTS[1], max_new_tokens=40), long_request(tokenizer)
    in_third_chunk = threading.Event()
    left = threading.Event()

    def third_chunk(p: Pass) -> bool:
        if p.width == CHUNK and log.widths().count(CHUNK) == 3:
            in_third_chunk.set()
            return True
        return False

    async def scenario() -> None:
        alone = await complete(engine.generate(running_request))
        log.passes.clear()
        log.holds += [first_decode_waits_for(engine, 2), (third_chunk, left.is_set)]
        running = asyncio.create_task(complete(engine.generate(running_request)))
        await until(lambda: engine.stats().in_flight == 1)
        leaving = asyncio.create_task(complete(engine.generate(long)))
        assert await asyncio.to_thread(in_third_chunk.wait, WAIT_S)
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        left.set()
        assert await asyncio.wait_for(running, WAIT_S) == alone
        assert await idle(engine)
        assert counts(engine.stats()) == (0, 0, 1)  # queued, in flight, cancelled

    asyncio.run(scenario())
    assert log.widths().count(CHUNK) == 3
    assert max(p.batch for p in log.passes) == 1


def test_a_short_prompt_is_not_held_behind_a_long_first_one(
    engine: BatchingTextEngine, tokenizer: PreTrainedTokenizerBase, log: PassLog
) -> None:
    """A long prompt starts the batch; a short one arriving during its prefill is prefilled
    at the next step and decodes while the long one is still going in."""
    long, short = long_request(tokenizer), greedy(PROMPTS[3], max_new_tokens=4)

    async def scenario() -> None:
        alone = [await complete(engine.generate(r)) for r in (long, short)]
        log.passes.clear()
        # The long prompt's second chunk waits for the short one to be in the engine.
        log.holds.append((lambda p: log.widths().count(CHUNK) == 2, lambda: in_engine(engine) == 2))
        first = asyncio.create_task(complete(engine.generate(long)))
        await until(lambda: engine.stats().in_flight == 1)
        second = asyncio.create_task(complete(engine.generate(short)))
        assert await asyncio.wait_for(asyncio.gather(first, second), WAIT_S) == alone

    asyncio.run(scenario())
    last_chunk = log.passes.index(Pass(1, LONG_PROMPT_TOKENS % CHUNK, LONG_PROMPT_TOKENS))
    size = prompt_tokens(tokenizer, short)
    short_prefill = log.passes.index(Pass(1, size, size))
    assert short_prefill < last_chunk
    # The short one decoded to its end (4 tokens: 3 passes) before the long prompt was in.
    assert [p.batch for p in log.passes[short_prefill:last_chunk] if p.width == 1] == [1, 1, 1]


def test_a_failed_chunk_ends_every_stream_the_prefilling_one_too(
    engine: BatchingTextEngine, tokenizer: PreTrainedTokenizerBase, log: PassLog
) -> None:
    """The joiner's second chunk fails: the running stream and the joiner (a member, not yet
    a row) both get the error, nothing stays counted, and the engine serves again."""
    running_request, long = greedy(PROMPTS[0], max_new_tokens=40), long_request(tokenizer)

    async def scenario() -> None:
        log.holds.append(first_decode_waits_for(engine, 2))
        log.fail_when = lambda p: p.width == CHUNK and log.widths().count(CHUNK) == 2
        streams = [asyncio.create_task(complete(engine.generate(running_request)))]
        await until(lambda: engine.stats().in_flight == 1)
        streams.append(asyncio.create_task(complete(engine.generate(long))))
        for stream in streams:
            with pytest.raises(RuntimeError, match="forward failed"):
                await asyncio.wait_for(stream, WAIT_S)
        assert await idle(engine)
        assert counts(engine.stats()) == (0, 0, 0)  # queued, in flight, cancelled
        after = await asyncio.wait_for(complete(engine.generate(long)), WAIT_S)
        assert after.completion_tokens == 12

    asyncio.run(scenario())


def test_prefill_chunk_tokens_must_be_positive(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        engine_with(model, tokenizer, 0)


def counts(stats: EngineStats) -> tuple[int, int, int]:
    """The request counts of the stats (tokens_generated grows with every request)."""
    return stats.queued, stats.in_flight, stats.cancelled
