"""A text engine on llama.cpp: GGUF weights as they are, continuous batching, shared
prompt prefixes.

One scheduler thread owns the llama.cpp context. Each step is one `llama_decode` of a
single batch holding every running sequence's next token plus at most
`prefill_chunk_tokens` of prompt tokens (shared prefixes first, then prompts fewest
remaining tokens first), so a long prompt arriving stretches the others' inter-token gap
by one chunk, not by its whole prefill. New requests join at the next step; a finished
or cancelled sequence's KV cells are freed at once.

There are no slots: every sequence draws its cells from one pool (llama.cpp's unified KV
cache) of `kv_cache_tokens` cells. A request reserves its prompt plus max_new_tokens when
it is admitted, so a decode never runs out of cells; beyond the pool, requests wait in a
bounded queue in arrival order. Each sequence has its own sampler chain (top-k, top-p,
temperature, a draw seeded with the request's seed; or greedy) and its own EventChannel,
sized to hold its whole output so the scheduler never waits on a slow reader.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from genserve.server.engine.base import EngineBase
from genserve.server.engine.channel import EventChannel
from genserve.server.engine.contract import CLOSE_WAIT_S
from genserve.server.text.detokenizer import ByteDetokenizer
from genserve.server.text.llama_runtime import BatchToken, ContextShape, LlamaRuntime, Sampler
from genserve.server.text.prefix_cache import CachedPrefix, PrefixCache
from genserve.server.text.token_stream import TokenStream, check_fits
from genserve.server.text.types import SamplingParams, TextEvent, TextFinal, TextRequest

logger = logging.getLogger(__name__)

# llama.cpp's own cap on sequence ids in one context (LLAMA_MAX_SEQ).
LLAMA_MAX_SEQUENCES = 256
# Prefixes held at once, each under a sequence id of its own.
MAX_CACHED_PREFIXES = 8
# Shorter histories are not worth a sequence id.
MIN_SHARED_PREFIX_TOKENS = 16
_CHANNEL_SLACK = 2  # the final event beyond the deltas


@dataclass(frozen=True)
class LlamaEngineConfig:
    kv_cache_tokens: int
    max_queue: int
    prefill_chunk_tokens: int
    threads: int = 0  # 0: every core this process may use
    # False: each sequence id a KV stream of its own (kv_cache_tokens split between them),
    # so `max_running` of them, not llama.cpp's 256: each stream is a slice of the cells.
    unified: bool = True
    max_running: int = 16

    def shape(self) -> ContextShape:
        ids = LLAMA_MAX_SEQUENCES if self.unified else self.max_running + MAX_CACHED_PREFIXES
        threads = self.threads or len(os.sched_getaffinity(0))
        return ContextShape(
            kv_tokens=self.kv_cache_tokens,
            max_sequences=ids,
            step_tokens=ids - MAX_CACHED_PREFIXES + self.prefill_chunk_tokens,
            threads=threads,
            unified=self.unified,
        )


@dataclass(frozen=True)
class PrefillCounters:
    """Prompt tokens since start: run through the model, and taken from a shared prefix."""

    computed: int
    reused: int


@dataclass(eq=False)
class _Sequence:
    prompt: list[int]
    prefix_length: int  # tokens of the prompt that other requests may share (0: none)
    params: SamplingParams
    channel: EventChannel[TextEvent]
    submitted: float
    sequence_id: int = -1
    sampler: Sampler | None = None
    tokens: TokenStream | None = None
    cursor: int = 0  # prompt tokens in this sequence's cells
    next_token: int | None = None  # sampled, to be fed at the next step
    position: int = 0
    waiting_on: CachedPrefix | None = None
    batch_index: int = -1  # where this step's logits for it are, or -1
    started: float = 0.0
    finished: bool = False

    @property
    def budget(self) -> int:
        return len(self.prompt) + self.params.max_new_tokens

    @property
    def cancelled(self) -> bool:
        return self.channel.cancelled

    @property
    def prefilling(self) -> bool:
        return self.waiting_on is None and self.cursor < len(self.prompt)

    def emit(self, event: TextEvent) -> None:
        self.channel.try_send(event)  # sized for every event; False once the reader left


class LlamaCppTextEngine(EngineBase[_Sequence]):
    def __init__(self, runtime: LlamaRuntime, config: LlamaEngineConfig, *, name: str) -> None:
        super().__init__(name, thread_name=f"llama-{name}", memory_bytes=runtime.memory_bytes)
        self._runtime = runtime
        self._config = config
        shape = runtime.shape
        sequences = shape.max_sequences - MAX_CACHED_PREFIXES
        self._free_ids = list(range(sequences - 1, -1, -1))
        self._prefixes = PrefixCache(range(sequences, shape.max_sequences))
        self._backlog: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._reserved = 0  # cells promised to running sequences and cached prefixes
        self._computed = 0
        self._reused = 0
        self._encoding = 0  # requests being tokenized on worker threads (they use the vocab)
        self._start_thread()

    # -- the engine contract (event loop side) --------------------------------------------

    @property
    def context_length(self) -> int:
        return self._runtime.context_length

    def prefill_counters(self) -> PrefillCounters:
        return PrefillCounters(computed=self._computed, reused=self._reused)

    async def generate(self, request: TextRequest) -> AsyncIterator[TextEvent]:
        with self._idle:
            if self._closed:
                raise self._closing_error()
            self._encoding += 1  # the scheduler frees the model only once this is 0
        try:
            prompt, prefix_length = await asyncio.to_thread(self.encode, request)
        finally:
            with self._idle:
                self._encoding -= 1
                self._idle.notify_all()
        check_fits(len(prompt), request.params.max_new_tokens, self.context_length)
        channel: EventChannel[TextEvent] = EventChannel(
            request.params.max_new_tokens + _CHANNEL_SLACK
        )
        sequence = _Sequence(prompt, prefix_length, request.params, channel, time.perf_counter())
        self._submit(sequence, max_queued=self._config.max_queue)
        try:
            async for event in channel.receive():
                yield event
        finally:
            channel.cancel()  # the scheduler frees its cells at the next step

    def kv_cells_reserved(self) -> int:
        """Cells promised to running requests and cached prefixes (of kv_cache_tokens)."""
        return self._reserved

    def encode(self, request: TextRequest) -> tuple[list[int], int]:
        """The prompt's tokens, and how many of them are the conversation before its last
        turn (the system prompt, usually): the part worth sharing."""
        runtime = self._runtime
        prompt = runtime.tokenize(runtime.render_chat(request.messages))
        if len(request.messages) < 2:
            return prompt, 0
        history = runtime.tokenize(
            runtime.render_chat(request.messages[:-1], generation_prompt=False)
        )
        shareable = (
            MIN_SHARED_PREFIX_TOKENS <= len(history) < len(prompt)
            and prompt[: len(history)] == history
        )
        return prompt, len(history) if shareable else 0

    # -- the scheduler thread --------------------------------------------------------------

    def _run_once(self) -> None:
        self._take_arrivals(block=not self._running and not self._backlog)
        if self._closed:
            return
        self._admit()
        if not self._running:
            return
        try:
            self._step()
        except Exception as exc:  # every request in the step gets it
            logger.exception("llama.cpp step failed with %d sequences", len(self._running))
            self._fail_all(exc)

    def _take_arrivals(self, *, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while item is not None:  # None: close() was called
                self._backlog.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _admit(self) -> None:
        """Starts waiting requests in arrival order while their cells and an id are free;
        the first that does not fit waits, and nothing behind it overtakes it."""
        # Callers that left while waiting, anywhere in the queue, give their place back now:
        # behind a head that does not fit they would hold queue places until it starts.
        for sequence in [s for s in self._backlog if s.cancelled]:
            self._backlog.remove(sequence)
            # Finished before it leaves the count of the queued: stats() in between never
            # shows it as running (in_flight is pending - queued).
            self._finish(sequence)
            self._dequeued()
        while self._backlog:
            sequence = self._backlog[0]
            if not self._free_ids or not self._make_room(sequence.budget):
                return
            self._backlog.popleft()
            self._dequeued()
            self._start(sequence)

    def _start(self, sequence: _Sequence) -> None:
        runtime = self._runtime
        sequence.sequence_id = self._free_ids.pop()
        self._reserved += sequence.budget
        sequence.started = time.perf_counter()
        sequence.sampler = Sampler(sequence.params)
        sequence.tokens = TokenStream(
            ByteDetokenizer(runtime.piece),
            runtime.is_end_of_generation,
            sequence.params,
            sequence.emit,
        )
        self._running.append(sequence)
        prefix = self._prefixes.longest_match(sequence.prompt)
        if prefix is None and sequence.prefix_length:
            prefix = self._new_prefix(sequence.prompt[: sequence.prefix_length])
        if prefix is None:
            return
        prefix.last_used = time.monotonic()
        if prefix.ready:
            self._share(prefix, sequence)
        else:
            prefix.waiting.append(sequence)
            sequence.waiting_on = prefix

    def _new_prefix(self, tokens: list[int]) -> CachedPrefix | None:
        if not self._make_room(len(tokens)):
            return None
        prefix = self._prefixes.add(tokens)
        if prefix is None and self._evict_one():
            prefix = self._prefixes.add(tokens)
        if prefix is not None:
            self._reserved += len(tokens)
        return prefix

    def _make_room(self, cells: int) -> bool:
        """Whether `cells` more fit in the pool, after evicting idle prefixes if need be."""
        kv_tokens = self._runtime.shape.kv_tokens
        while self._reserved + cells > kv_tokens:
            if not self._evict_one():
                return False
        return True

    def _evict_one(self) -> bool:
        idle = self._prefixes.idle()
        if not idle:
            return False
        prefix = idle[0]
        self._runtime.forget(prefix.sequence)
        self._prefixes.remove(prefix)
        self._reserved -= len(prefix.tokens)
        return True

    def _share(self, prefix: CachedPrefix, sequence: _Sequence) -> None:
        self._runtime.share(prefix.sequence, sequence.sequence_id, len(prefix.tokens))
        sequence.cursor = len(prefix.tokens)
        sequence.waiting_on = None
        self._reused += len(prefix.tokens)

    def _step(self) -> None:
        """One llama_decode: every decoding sequence's next token, then up to one chunk of
        prompt tokens; then each sequence with logits in it samples its next token."""
        for sequence in [s for s in self._running if s.cancelled]:
            self._finish(sequence)
        batch: list[BatchToken] = []
        sampled: list[_Sequence] = []
        for sequence in self._running:
            if sequence.next_token is not None:
                sequence.batch_index = len(batch)
                sampled.append(sequence)
                batch.append(
                    BatchToken(sequence.next_token, sequence.position, sequence.sequence_id, True)
                )
        budget = self._config.prefill_chunk_tokens
        filled: list[tuple[CachedPrefix, int]] = []
        for prefix in self._prefixes.filling():
            take = min(budget, len(prefix.remaining))
            for offset, token in enumerate(prefix.remaining[:take]):
                batch.append(BatchToken(token, prefix.filled + offset, prefix.sequence, False))
            filled.append((prefix, take))
            budget -= take
            if not budget:
                break
        prompts: list[tuple[_Sequence, int]] = []
        for sequence, take in _prompt_shares(
            [s for s in self._running if s.prefilling], budget
        ).items():
            end = sequence.cursor + take
            for position in range(sequence.cursor, end):
                last = position == len(sequence.prompt) - 1
                batch.append(
                    BatchToken(sequence.prompt[position], position, sequence.sequence_id, last)
                )
            if end == len(sequence.prompt):
                sequence.batch_index = len(batch) - 1
                sampled.append(sequence)
            prompts.append((sequence, take))
            budget -= take
        if not batch:
            return
        self._runtime.decode(batch)
        self._stepped()
        self._computed += self._config.prefill_chunk_tokens - budget
        for prefix, take in filled:
            prefix.filled += take
            if prefix.ready:
                for waiter in prefix.waiting:
                    self._share(prefix, waiter)
                prefix.waiting.clear()
        for sequence, take in prompts:
            sequence.cursor += take
            sequence.position = sequence.cursor
        for sequence in sampled:
            self._advance(sequence)

    def _advance(self, sequence: _Sequence) -> None:
        assert sequence.sampler is not None and sequence.tokens is not None
        token = sequence.sampler.sample(self._runtime.context, sequence.batch_index)
        sequence.batch_index = -1
        if sequence.next_token is not None:
            sequence.position += 1
        sequence.tokens.push(token)
        if sequence.tokens.stopped or sequence.cancelled:
            self._finish(sequence)
        else:
            sequence.next_token = token

    def _finish(
        self, sequence: _Sequence, error: Exception | None = None, *, closing: bool = False
    ) -> None:
        """Ends a request: frees its cells and id, sends its final event (finish reason
        CANCELLED when its caller left or the engine is closing) or the error."""
        if sequence.finished:
            return
        sequence.finished = True
        if sequence.sequence_id >= 0:
            self._runtime.forget(sequence.sequence_id)
            self._free_ids.append(sequence.sequence_id)
            self._reserved -= sequence.budget
            self._running.remove(sequence)
        if sequence.waiting_on is not None:
            sequence.waiting_on.waiting.remove(sequence)
        if sequence.sampler is not None:
            sequence.sampler.free()
        tokens = 0
        if sequence.tokens is not None and error is None:
            final = TextFinal(
                finish_reason=sequence.tokens.finish(cancelled=sequence.cancelled or closing),
                prompt_tokens=len(sequence.prompt),
                completion_tokens=sequence.tokens.completion_tokens,
                seed=sequence.params.seed,
                queued_ms=(sequence.started - sequence.submitted) * 1000,
                inference_ms=(time.perf_counter() - sequence.started) * 1000,
            )
            tokens = final.completion_tokens
            sequence.emit(final)
        self._finished(sequence, error, tokens=tokens)

    def _fail_all(self, error: Exception) -> None:
        """After a failed decode the cells are in an unknown state: every running request
        ends with the error and the cache starts empty."""
        for sequence in list(self._running):
            self._finish(sequence, error)
        self._runtime.clear()
        for prefix in self._prefixes.clear():
            self._reserved -= len(prefix.tokens)

    def _shutdown(self) -> None:
        """Closing: running requests end with finish reason CANCELLED, waiting ones with
        UNAVAILABLE (they never started); then the context is freed."""
        for sequence in list(self._running):
            self._finish(sequence, closing=True)
        while self._backlog:
            self._refuse(self._backlog.popleft())
        with self._idle:
            encodes_done = self._idle.wait_for(lambda: self._encoding == 0, CLOSE_WAIT_S)
        if encodes_done:  # else leak the model rather than free it under a tokenizer
            self._runtime.close()


def _prompt_shares(prefilling: list[_Sequence], budget: int) -> dict[_Sequence, int]:
    """The step's prompt tokens for each prefilling sequence. Shortest remainder first: a
    short prompt's first token is not held behind a long one. But the longest-waiting
    sequence is always given half the budget, or a steady stream of short prompts, each
    first by length, would starve a long one forever; with it, a prompt's prefill ends
    within 2 x its length / budget steps of its start, whatever arrives after it."""
    shares: dict[_Sequence, int] = {}
    if not prefilling or budget < 1:
        return shares
    oldest = min(prefilling, key=lambda s: s.started)
    shares[oldest] = min(_remaining(oldest), max(1, budget // 2))
    budget -= shares[oldest]
    for sequence in sorted(prefilling, key=_remaining):
        if not budget:
            break
        more = min(budget, _remaining(sequence) - shares.get(sequence, 0))
        if more > 0:
            shares[sequence] = shares.get(sequence, 0) + more
            budget -= more
    return shares


def _remaining(sequence: _Sequence) -> int:
    return len(sequence.prompt) - sequence.cursor


def load_llama_engine(gguf: Path, config: LlamaEngineConfig, *, name: str) -> LlamaCppTextEngine:
    logger.info("loading %s into llama.cpp from %s", name, gguf)
    return LlamaCppTextEngine(LlamaRuntime(gguf, config.shape()), config, name=name)
