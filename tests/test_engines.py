"""The engine layer on its own: the thread-to-loop channel, the serial engine and the
batching scheduler, driven directly with real threads, a real event loop and a tiny
random-weight causal LM (no server, no network, no model hub)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from genserve.server.engine.channel import Cancelled, EventChannel
from genserve.server.engine.contract import EngineStats
from genserve.server.engine.serial import Job, SerialEngine
from genserve.server.errors import ResourceExhausted
from genserve.server.text.batching_engine import BatchingTextEngine
from genserve.server.text.transformers_engine import SerialTextEngine
from genserve.server.text.types import (
    ChatTurn,
    FinishReason,
    SamplingParams,
    TextDelta,
    TextFinal,
    TextRequest,
)

# Bounds every wait, so a defect fails a test instead of hanging the suite.
WAIT_S = 5.0


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Polls a condition that another thread makes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.005)


async def idle(engine: Any) -> bool:
    """wait_idle off the loop: the loop must keep running for the engine to finish."""
    return bool(await asyncio.to_thread(engine.wait_idle, WAIT_S))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """A model this small gains nothing from intra-op threads, and on a busy machine their
    spinning makes each pass take up to hundreds of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- EventChannel ---------------------------------------------------------------------------


class Producer:
    """A thread that sends `count` numbered events, then closes the channel with `error`;
    records how far it got, the most it saw buffered and what stopped it."""

    def __init__(
        self, channel: EventChannel[int], count: int, error: BaseException | None = None
    ) -> None:
        self._channel = channel
        self._count = count
        self._error = error
        self.sent = 0
        self.max_buffered = 0
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i in range(self._count):
                self._channel.send(i)
                self.sent += 1
                self.max_buffered = max(self.max_buffered, self._channel.buffered)
            self._channel.close(self._error)
        except Cancelled as exc:
            self.raised = exc

    async def join(self) -> None:
        await asyncio.to_thread(self.thread.join, WAIT_S)
        assert not self.thread.is_alive(), "the producer is still blocked"


def test_channel_delivers_every_event_in_order() -> None:
    async def scenario() -> None:
        channel: EventChannel[int] = EventChannel(4)
        producer = Producer(channel, 500)
        assert [e async for e in channel.receive()] == list(range(500))
        await producer.join()
        assert producer.raised is None

    asyncio.run(scenario())


def test_channel_producer_waits_for_a_stalled_reader() -> None:
    capacity = 3

    async def scenario() -> None:
        channel: EventChannel[int] = EventChannel(capacity)
        producer = Producer(channel, 20)
        events = channel.receive()
        await until(lambda: producer.sent == capacity)
        await asyncio.sleep(0.2)  # time enough to run ahead, were the buffer unbounded
        assert (producer.sent, channel.buffered) == (capacity, capacity)

        assert await anext(events) == 0  # one read frees one slot: one more send
        await until(lambda: producer.sent == capacity + 1)
        await asyncio.sleep(0.1)
        assert (producer.sent, channel.buffered) == (capacity + 1, capacity)

        assert [e async for e in events] == list(range(1, 20))
        await producer.join()
        assert producer.max_buffered <= capacity

    asyncio.run(scenario())


def test_channel_try_send_never_waits() -> None:
    async def scenario() -> None:
        channel: EventChannel[int] = EventChannel(2)
        assert [channel.try_send(i) for i in range(3)] == [True, True, False]
        channel.close()
        assert [e async for e in channel.receive()] == [0, 1]

    asyncio.run(scenario())


@pytest.mark.parametrize("leave", ["aclose", "cancel"])
def test_channel_reader_leaving_unblocks_a_blocked_producer(leave: str) -> None:
    async def scenario() -> None:
        channel: EventChannel[int] = EventChannel(2)
        producer = Producer(channel, 1000)
        events = channel.receive()
        assert await anext(events) == 0
        await until(lambda: producer.sent == 3)  # one read, two buffered, the fourth waits
        if leave == "aclose":
            await events.aclose()
        else:
            channel.cancel()
        await producer.join()
        assert isinstance(producer.raised, Cancelled)
        assert producer.sent == 3

    asyncio.run(scenario())


def test_channel_close_error_reaches_the_reader_after_the_buffered_events() -> None:
    async def scenario() -> None:
        channel: EventChannel[int] = EventChannel(8)
        producer = Producer(channel, 3, error=ValueError("model broke"))
        await producer.join()  # everything is buffered, and the error given, before reading
        received: list[int] = []
        with pytest.raises(ValueError, match="model broke"):
            async for event in channel.receive():
                received.append(event)
        assert received == [0, 1, 2]

    asyncio.run(scenario())


# -- SerialEngine ---------------------------------------------------------------------------


class GatedWork:
    """Work that records each request it runs, then waits for `release` and emits one event."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release = threading.Event()

    def __call__(self, request: str, job: Job[str]) -> None:
        self.ran.append(request)
        self.release.wait(WAIT_S)
        job.emit(f"{request} done")


@pytest.fixture
def gated() -> Iterator[tuple[SerialEngine[str, str], GatedWork]]:
    work = GatedWork()
    engine: SerialEngine[str, str] = SerialEngine("gated", work, max_queue=1)
    yield engine, work
    work.release.set()
    engine.close()


async def collect(events: AsyncIterator[str]) -> list[str]:
    return [e async for e in events]


def test_serial_engine_refuses_past_its_queue_bound(
    gated: tuple[SerialEngine[str, str], GatedWork],
) -> None:
    engine, work = gated

    async def scenario() -> None:
        first = asyncio.create_task(collect(engine.generate("a")))
        await until(lambda: engine.stats().in_flight == 1)
        second = asyncio.create_task(collect(engine.generate("b")))
        await until(lambda: engine.stats().queued == 1)
        with pytest.raises(ResourceExhausted):
            await anext(engine.generate("c"))
        work.release.set()
        assert await asyncio.wait_for(first, WAIT_S) == ["a done"]
        assert await asyncio.wait_for(second, WAIT_S) == ["b done"]
        assert work.ran == ["a", "b"]
        assert await idle(engine)

    asyncio.run(scenario())


def test_serial_engine_never_runs_a_job_whose_caller_left_while_queued(
    gated: tuple[SerialEngine[str, str], GatedWork],
) -> None:
    engine, work = gated

    async def scenario() -> None:
        first = asyncio.create_task(collect(engine.generate("a")))
        await until(lambda: engine.stats().in_flight == 1)
        leaving = asyncio.create_task(collect(engine.generate("b")))
        await until(lambda: engine.stats().queued == 1)
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        work.release.set()
        assert await asyncio.wait_for(first, WAIT_S) == ["a done"]
        assert await idle(engine)
        assert work.ran == ["a"]
        assert (engine.stats().queued, engine.stats().in_flight) == (0, 0)

    asyncio.run(scenario())


def count_forever(request: str, job: Job[int]) -> None:
    for i in itertools.count():
        job.emit(i)


def test_serial_engine_caller_that_stops_reading_cancels_the_running_job() -> None:
    engine: SerialEngine[str, int] = SerialEngine("endless", count_forever, max_queue=1)

    async def scenario() -> None:
        events = engine.generate("a")
        assert [await anext(events), await anext(events)] == [0, 1]
        await events.aclose()  # the job is waiting on a full buffer: its send raises now
        # On the loop thread, without yielding to it: closing the stream is enough, the
        # engine does not wait for the loop to collect the abandoned iterator.
        assert engine.wait_idle(WAIT_S)
        stats = engine.stats()
        assert (stats.queued, stats.in_flight, stats.cancelled) == (0, 0, 1)
        assert stats.tokens_generated < 10  # stopped within a few steps of 200

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def fail_on_request(request: str, job: Job[str]) -> None:
    job.emit(f"{request} started")
    if request == "fail":
        raise ValueError("model broke")


def test_serial_engine_work_exception_reaches_the_caller() -> None:
    engine: SerialEngine[str, str] = SerialEngine("failing", fail_on_request, max_queue=1)

    async def scenario() -> None:
        received: list[str] = []
        with pytest.raises(ValueError, match="model broke"):
            async for event in engine.generate("fail"):
                received.append(event)
        assert received == ["fail started"]
        assert await idle(engine)
        assert await collect(engine.generate("next")) == ["next started"]  # it still serves

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


# -- the batching scheduler, on a tiny model ---------------------------------------------------

# A CLIP tokenizer (BPE, no chat template, so encode_chat joins the turns as plain text).
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "var/models/stable-diffusion/tokenizer"

PROMPTS = [
    "What is FastAPI?",
    "Name a colour.",
    "Write one sentence about the sea and the wind over it.",
    "What is 2 + 2?",
]

TextEngine: TypeAlias = BatchingTextEngine | SerialTextEngine


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"needs {TOKENIZER_DIR} (make models)")
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    torch.manual_seed(0)  # the same weights every run: greedy outputs are fixed
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # every id the model picks decodes
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


class ForwardSpy:
    """A forward pre-hook on the real model: records (batch, new positions) of every pass,
    can hold the next decoding step until a condition holds, and can fail one pass."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.passes: list[tuple[int, int]] = []
        self.hold_until: Callable[[], bool] | None = None
        self.fail_when: Callable[[int, int], bool] | None = None
        self.failed = False
        self._handle = model.register_forward_pre_hook(self._before, with_kwargs=True)

    @property
    def decode_batches(self) -> list[int]:
        """Batch sizes of the decoding steps (one new position per row)."""
        return [batch for batch, width in self.passes if width == 1]

    def remove(self) -> None:
        self._handle.remove()

    def _before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        batch, width = input_ids.shape
        self.passes.append((batch, width))
        if self.hold_until is not None and width == 1:
            deadline = time.monotonic() + WAIT_S
            while not self.hold_until() and time.monotonic() < deadline:
                time.sleep(0.002)
            self.hold_until = None
        if self.fail_when is not None and self.fail_when(batch, width):
            self.fail_when = None  # once: the engine must serve again afterwards
            self.failed = True
            raise RuntimeError("forward failed")


@pytest.fixture
def spy(model: LlamaForCausalLM) -> Iterator[ForwardSpy]:
    spy = ForwardSpy(model)
    yield spy
    spy.remove()


def batching_engine(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> TextEngine:
    return BatchingTextEngine(
        model,
        tokenizer,
        name="tiny",
        max_queue=8,
        max_batch_size=8,
        max_wait_ms=5,
        max_batch_tokens=4096,
    )


def serial_engine(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> TextEngine:
    return SerialTextEngine(model, tokenizer, name="tiny", max_queue=8)


def greedy(prompt: str, max_new_tokens: int = 12) -> TextRequest:
    params = SamplingParams(
        max_new_tokens=max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=0
    )
    return TextRequest(messages=(ChatTurn("user", prompt),), params=params)


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: FinishReason


async def complete(events: AsyncIterator[TextDelta | TextFinal]) -> Completion:
    text: list[str] = []
    final: TextFinal | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            final = event
    assert final is not None, "the stream ended without its final event"
    return Completion("".join(text), final.completion_tokens, final.finish_reason)


def in_engine(engine: TextEngine) -> int:
    stats = engine.stats()
    return stats.queued + stats.in_flight


@pytest.mark.parametrize(
    ("make_engine", "shares_passes"), [(batching_engine, True), (serial_engine, False)]
)
def test_concurrent_requests_share_forward_passes_and_keep_their_output(
    make_engine: Callable[[LlamaForCausalLM, PreTrainedTokenizerBase], TextEngine],
    shares_passes: bool,
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    spy: ForwardSpy,
) -> None:
    """The batching engine decodes concurrent requests in one pass per step; the serial
    engine never does (so this tells them apart, where the servicer-level tests cannot).
    Either way each greedy output is what the request gets alone."""
    engine = make_engine(model, tokenizer)

    async def scenario() -> None:
        alone = [await complete(engine.generate(greedy(p))) for p in PROMPTS]
        assert max(spy.decode_batches) == 1
        spy.passes.clear()
        # The first decoding step waits for every request to be in the engine, so the
        # test does not depend on how the threads happen to be scheduled.
        spy.hold_until = lambda: in_engine(engine) == len(PROMPTS)
        together = await asyncio.wait_for(
            asyncio.gather(*(complete(engine.generate(greedy(p))) for p in PROMPTS)), WAIT_S
        )
        assert together == alone
        if shares_passes:
            assert max(spy.decode_batches) == len(PROMPTS)
        else:
            assert max(spy.decode_batches) == 1
        assert await idle(engine)

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


@pytest.mark.parametrize(
    "make_engine",
    [
        batching_engine,
        serial_engine,
    ],
)
def test_closing_a_text_stream_stops_its_request_at_once(
    make_engine: Callable[[LlamaForCausalLM, PreTrainedTokenizerBase], TextEngine],
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    engine = make_engine(model, tokenizer)

    async def scenario() -> None:
        events = engine.generate(greedy(PROMPTS[0], max_new_tokens=200))
        assert isinstance(await anext(events), TextDelta)
        await events.aclose()
        assert engine.wait_idle(2.0)  # on the loop thread, as in the serial engine's test
        stats = engine.stats()
        assert (stats.queued, stats.in_flight, stats.cancelled) == (0, 0, 1)
        assert stats.tokens_generated < 10  # stopped within a few steps of 200

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_failed_step_after_late_arrivals_joined_ends_every_stream(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, spy: ForwardSpy
) -> None:
    """A and then B and C, who join A's running batch; the first step of the three fails.
    Every caller gets the error (none waits for its deadline), nothing stays counted as
    pending, and the engine serves the next request."""
    engine = batching_engine(model, tokenizer)

    async def scenario() -> None:
        spy.hold_until = lambda: in_engine(engine) == 3  # A's first step waits for B and C
        spy.fail_when = lambda batch, width: batch == 3 and width == 1
        first = asyncio.create_task(complete(engine.generate(greedy(PROMPTS[0], 200))))
        await until(lambda: engine.stats().in_flight == 1)  # A is prefilled: decoding now
        joiners = [
            asyncio.create_task(complete(engine.generate(greedy(p, max_new_tokens=200))))
            for p in PROMPTS[1:3]
        ]
        for stream in [first, *joiners]:
            with pytest.raises(RuntimeError, match="forward failed"):
                await asyncio.wait_for(stream, WAIT_S)
        assert spy.failed
        assert await idle(engine)
        assert counts(engine.stats()) == (0, 0, 0)  # queued, in flight, cancelled
        after = await asyncio.wait_for(complete(engine.generate(greedy(PROMPTS[3]))), WAIT_S)
        assert after.completion_tokens == 12 and after.finish_reason is FinishReason.LENGTH

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_late_arrival_that_overflows_max_batch_tokens_waits_for_the_batch(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, spy: ForwardSpy
) -> None:
    """max_batch_tokens bounds a running batch too: a request that would take it past the
    budget does not join, it runs once the batch is done (and both outputs are whole)."""
    first, second = greedy(PROMPTS[0], max_new_tokens=40), greedy(PROMPTS[1], max_new_tokens=40)
    budgets = [len(tokenizer(r.messages[0].content)["input_ids"]) + 40 for r in (first, second)]
    engine = BatchingTextEngine(
        model,
        tokenizer,
        name="tiny",
        max_queue=8,
        max_batch_size=8,
        max_wait_ms=0,
        max_batch_tokens=max(budgets) + min(budgets) - 1,  # either fits alone, not both
    )

    async def scenario() -> None:
        spy.hold_until = lambda: in_engine(engine) == 2  # the second arrives mid-batch
        running = asyncio.create_task(complete(engine.generate(first)))
        await until(lambda: engine.stats().in_flight == 1)
        waiting = asyncio.create_task(complete(engine.generate(second)))
        results = await asyncio.wait_for(asyncio.gather(running, waiting), WAIT_S)
        assert [r.completion_tokens for r in results] == [40, 40]
        assert max(spy.decode_batches) == 1

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def counts(stats: EngineStats) -> tuple[int, int, int]:
    """The request counts of the stats (tokens_generated grows with every request)."""
    return stats.queued, stats.in_flight, stats.cancelled
