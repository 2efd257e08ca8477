"""A text engine that batches concurrent requests into shared forward passes.

Continuous batching: the scheduler thread takes the first waiting request, gathers the
others that arrive within `max_wait_ms` (up to `max_batch_size` and `max_batch_tokens`),
and decodes them together with its own loop over the model and a shared KV cache;
requests arriving later join between decoding steps. Each prompt is prefilled on its own,
then its cache rows are merged in, left-padded with an attention mask and position ids,
so a sequence's greedy output is the same alone or in a batch. Each sequence keeps its
own sampling parameters and seed (a generator per row), streams its own tokens, and
leaves the batch (its cache rows dropped) when it finishes or its caller goes away; the
others carry on. On this CPU batch 1 is bound by reading the weights once per token, so
sharing each pass among B sequences multiplies throughput.

Prefill is chunked: a prompt goes into its cache at most `prefill_chunk_tokens` tokens
per forward, and its sequence joins the decoding rows once the whole prompt is in. Each
scheduler step is one decoding pass of the running rows plus at most one chunk's worth of
prefill, so a long prompt arriving (6k tokens: ~20 s of prefill here) stretches the
running streams' inter-token gaps by one chunk's time, not by its whole prefill. The
prompts being prefilled share that budget fewest-remaining-tokens first, so a short one
is not held behind a long one either. A prompt's chunks are the same whatever else is in
the engine, so its prefill computes the same alone or among others.

Each sequence's events go through its own EventChannel. The scheduler never waits on one
slow reader (that would stall the whole batch): a channel holds up to the sequence's
max_new_tokens deltas plus its final event, so an unread stream is bounded by its own
size (a few KB of text).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from genserve.server.engine.base import EngineBase
from genserve.server.engine.channel import EventChannel
from genserve.server.engine.contract import module_bytes
from genserve.server.text.token_stream import (
    TokenStream,
    check_fits,
    context_length,
    encode_chat,
    eos_token_ids,
    hf_token_stream,
)
from genserve.server.text.types import SamplingParams, TextEvent, TextFinal, TextRequest

logger = logging.getLogger(__name__)

# Events beyond the deltas that a sequence's channel must hold: its final event.
_CHANNEL_SLACK = 2
# Prompt tokens prefilled per scheduler step. bench/prefill_gap.py (SmolLM2-135M, 2 CPU
# cores, a 4000-token prompt joining a greedy stream): the stream's longest gap is 11.5 s
# unchunked, ~1.0 s at 128 or 256 and 1.9 s at 512; the long request's first token comes
# 42%, 8% and -3% later, both are done 16%, 0% and -1% later. 256 is the knee.
DEFAULT_PREFILL_CHUNK_TOKENS = 256


@dataclass
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    channel: EventChannel[TextEvent]
    submitted: float
    tokens: TokenStream | None = None
    generator: torch.Generator | None = None
    started: float = 0.0
    finished: bool = False

    @property
    def budget(self) -> int:
        return len(self.prompt_ids) + self.params.max_new_tokens

    @property
    def cancelled(self) -> bool:
        return self.channel.cancelled

    def emit(self, event: TextEvent) -> None:
        # Sized to hold every event of the sequence: False only once its reader has gone.
        self.channel.try_send(event)


_State = tuple[list[_Sequence], DynamicCache, torch.Tensor, torch.Tensor]
"""The running batch: its sequences, their KV cache, attention mask and next logits."""


@dataclass
class _Prefill:
    """A sequence whose prompt is going into its own cache, a chunk at a time."""

    sequence: _Sequence
    cache: DynamicCache
    done: int = 0  # prompt tokens in the cache

    @property
    def remaining(self) -> int:
        return len(self.sequence.prompt_ids) - self.done


def _merge(running: _State, joining: _State) -> _State:
    """One batch of two: the shorter cache and mask are left-padded (masked out)."""
    rows_a, cache_a, mask_a, logits_a = running
    rows_b, cache_b, mask_b, logits_b = joining
    width = max(mask_a.shape[1], mask_b.shape[1])
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
        a: Any = layer_a
        b: Any = layer_b
        a.keys = torch.cat([_left_pad(a.keys, width), _left_pad(b.keys, width)])
        a.values = torch.cat([_left_pad(a.values, width), _left_pad(b.values, width)])
    mask = torch.cat([_left_pad_mask(mask_a, width), _left_pad_mask(mask_b, width)])
    return rows_a + rows_b, cache_a, mask, torch.cat([logits_a, logits_b])


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, heads, length, dim] -> [batch, heads, width, dim], zeros on the left."""
    missing = width - states.shape[-2]
    if missing == 0:
        return states
    pad = states.new_zeros((*states.shape[:-2], missing, states.shape[-1]))
    return torch.cat([pad, states], dim=-2)


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


def _trim(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Drops the leading positions no row attends to (left by rows that have left, a long
    prompt's say), so the others stop paying for them at every step. The trimmed mask."""
    first = int(mask.any(dim=0).int().argmax())  # 0 when every column is in use
    if first == 0:
        return mask
    for layer in cache.layers:
        states: Any = layer
        states.keys = states.keys[..., first:, :]
        states.values = states.values[..., first:, :]
    return mask[:, first:]


class BatchingTextEngine(EngineBase[_Sequence]):
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        max_queue: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_batch_tokens: int,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    ) -> None:
        if prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be at least 1")
        super().__init__(name, thread_name=f"text-{name}", memory_bytes=module_bytes(model))
        self._model = model
        self._tokenizer = tokenizer
        self._max_queue = max_queue
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._max_batch_tokens = max_batch_tokens
        self._chunk = prefill_chunk_tokens
        self._device = next(model.parameters()).device
        self._eos_token_ids = eos_token_ids(model, tokenizer)
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._pad_id = int(pad or 0)
        # The running batch, owned by the scheduler thread:
        self._carry: _Sequence | None = None  # taken from the inbox but did not fit a batch
        self._members: list[_Sequence] = []  # every sequence of the batch, joiners too
        self._state: _State | None = None  # the decoding rows
        self._prefilling: list[_Prefill] = []  # admission order
        self._start_thread()

    @property
    def context_length(self) -> int:
        return context_length(self._model)

    async def generate(self, request: TextRequest) -> AsyncIterator[TextEvent]:
        prompt_ids = await asyncio.to_thread(encode_chat, self._tokenizer, request)
        check_fits(len(prompt_ids), request.params.max_new_tokens, self.context_length)
        channel: EventChannel[TextEvent] = EventChannel(
            request.params.max_new_tokens + _CHANNEL_SLACK
        )
        sequence = _Sequence(prompt_ids, request.params, channel, time.perf_counter())
        self._submit(sequence, max_queued=self._max_queue)
        # Closing this iterator cancels the channel: the sequence leaves its batch next step.
        try:
            async for event in channel.receive():
                yield event
        finally:
            channel.cancel()  # at once, not when the loop collects a suspended receive()

    # -- the scheduler thread -------------------------------------------------------------

    def _run_once(self) -> None:
        """Starts a batch when none runs, then one step of it."""
        if self._state is None and not self._prefilling:
            batch = self._gather()
            if not batch:
                return
            self._members = list(batch)
            self._prefilling = self._start(batch)
        try:
            with torch.inference_mode():
                self._step()
        except Exception as exc:  # every caller in the batch gets it, joiners included
            logger.exception("batch of %d failed", len(self._members))
            for sequence in self._members:
                self._finish(sequence, None, error=exc)
            self._state, self._prefilling = None, []
        if self._state is None and not self._prefilling:
            self._members = []

    def _gather(self) -> list[_Sequence]:
        """The next batch: the first waiting request, and those that arrive within
        max_wait_ms (up to max_batch_size and max_batch_tokens). Empty when closing."""
        first = self._carry or self._inbox.get()
        self._carry = None
        if first is None:
            return []
        batch = [first]
        tokens = first.budget
        deadline = time.perf_counter() + self._max_wait_s
        while len(batch) < self._max_batch_size:
            try:
                nxt = self._inbox.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if nxt is None:
                break
            if tokens + nxt.budget > self._max_batch_tokens:
                self._carry = nxt
                break
            batch.append(nxt)
            tokens += nxt.budget
        if self._closed:  # close() came while it gathered: they end as the queue does
            for sequence in batch:
                self._refuse(sequence)
            return []
        return batch

    def _step(self) -> None:
        """One decoding pass of the running rows, then one chunk's worth of prefill; a
        sequence whose prompt is in joins the running rows. Sequences arriving meanwhile
        join the prefill."""
        if self._state is not None:
            self._state = self._decode(self._state)
        rows = self._state[0] if self._state else []
        newcomers = self._admit(rows + [p.sequence for p in self._prefilling])
        self._members.extend(newcomers)
        self._prefilling += self._start(newcomers)
        self._prefilling, ready = self._prefill_step(self._prefilling)
        if ready:  # merged among themselves first: the big cache is copied once
            joined = functools.reduce(_merge, ready)
            self._state = joined if self._state is None else _merge(self._state, joined)
        self._stepped()

    def _interrupt(self) -> None:
        for sequence in list(self._members):
            sequence.channel.cancel()

    def _shutdown(self) -> None:
        """Closing: the batch's sequences (cancelled by close) end; the carried one too."""
        for sequence in list(self._members):
            self._finish(sequence, sequence.tokens, closing=True)
        self._members, self._state, self._prefilling = [], None, []
        if self._carry is not None:
            self._refuse(self._carry)
            self._carry = None

    def _decode(self, state: _State) -> _State | None:
        """Samples each row's next token, drops the rows that are done, and runs the pass
        that gives the others' next logits. None once no row is left."""
        rows, cache, mask, logits = state
        next_tokens = [self._sample(logits[i], s) for i, s in enumerate(rows)]
        keep = []
        for i, (sequence, token) in enumerate(zip(rows, next_tokens, strict=True)):
            assert sequence.tokens is not None
            sequence.tokens.push(token)
            if sequence.tokens.stopped or sequence.cancelled:
                self._finish(sequence, sequence.tokens)
            else:
                keep.append(i)
        if not keep:
            return None
        if len(keep) < len(rows):  # finished rows leave; the others carry on
            cache.batch_select_indices(torch.tensor(keep, device=self._device))
            mask = _trim(cache, mask[keep])
            rows = [rows[i] for i in keep]
            next_tokens = [next_tokens[i] for i in keep]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        step_ids = torch.tensor(next_tokens, dtype=torch.long)[:, None]
        logits = self._forward(step_ids, mask, mask.sum(-1, keepdim=True) - 1, cache)
        return rows, cache, mask, logits

    def _admit(self, running: list[_Sequence]) -> list[_Sequence]:
        """Waiting sequences that fit beside the running ones (max_batch_size and
        max_batch_tokens), without blocking. The first that does not fit is carried: it
        starts the next batch, and nothing behind it overtakes it."""
        admitted: list[_Sequence] = []
        tokens = sum(s.budget for s in running)
        while len(running) + len(admitted) < self._max_batch_size:
            candidate: _Sequence | None
            if self._carry is not None:
                candidate, self._carry = self._carry, None
            else:
                try:
                    candidate = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if candidate is None:  # closing: the batch ends after this step
                break
            fits = tokens + candidate.budget <= self._max_batch_tokens
            if not fits and (running or admitted):  # one alone always runs, as in _schedule
                self._carry = candidate
                break
            admitted.append(candidate)
            tokens += candidate.budget
        return admitted

    def _start(self, batch: list[_Sequence]) -> list[_Prefill]:
        """Prefills to run for the sequences that are still wanted."""
        started = []
        for sequence in batch:
            self._dequeued()
            if sequence.cancelled:  # left while waiting
                self._finish(sequence, None)
                continue
            sequence.started = time.perf_counter()
            sequence.tokens = hf_token_stream(
                self._tokenizer, self._eos_token_ids, sequence.params, sequence.emit
            )
            sequence.generator = torch.Generator().manual_seed(sequence.params.seed)
            started.append(_Prefill(sequence, DynamicCache()))
        return started

    def _prefill_step(self, prefilling: list[_Prefill]) -> tuple[list[_Prefill], list[_State]]:
        """Spends one step's prefill budget (prefill_chunk_tokens), fewest remaining tokens
        first, each forward one chunk of one prompt (at least one forward a step). Those
        still prefilling, and the states of those whose prompt is in."""
        left: list[_Prefill] = []
        ready: list[_State] = []
        spent = 0
        for job in sorted(prefilling, key=lambda p: p.remaining):
            if job.sequence.cancelled:  # the caller left mid-prefill: its cache goes
                self._finish(job.sequence, job.sequence.tokens)
                continue
            width = min(self._chunk, job.remaining)
            if spent and spent + width > self._chunk:
                left.append(job)
                continue
            spent += width
            logits = self._prefill_chunk(job, width)
            if job.remaining:
                left.append(job)
            else:
                mask = torch.ones((1, job.done), dtype=torch.long)
                ready.append(([job.sequence], job.cache, mask, logits))
        return left, ready

    def _prefill_chunk(self, job: _Prefill, width: int) -> torch.Tensor:
        """The next `width` prompt tokens of one sequence into its cache; the logits after
        them (the first token's, once the prompt is in)."""
        end = job.done + width
        input_ids = torch.tensor([job.sequence.prompt_ids[job.done : end]], dtype=torch.long)
        mask = torch.ones((1, end), dtype=torch.long)
        positions = torch.arange(job.done, end)[None]
        logits = self._forward(input_ids, mask, positions, job.cache)
        job.done = end
        return logits

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        output = self._model(
            input_ids=input_ids.to(self._device),
            attention_mask=mask.to(self._device),
            position_ids=positions.to(self._device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # a prefill needs only the last position's logits
        )
        return output.logits[:, -1, :].float().cpu()

    def _sample(self, logits: torch.Tensor, sequence: _Sequence) -> int:
        params = sequence.params
        if not params.do_sample:
            return int(torch.argmax(logits))
        scores = logits / params.temperature
        if 0 < params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) > params.top_p  # keep the first
            scores = scores.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=sequence.generator))

    def _finish(
        self,
        sequence: _Sequence,
        tokens: TokenStream | None,
        error: Exception | None = None,
        *,
        closing: bool = False,
    ) -> None:
        """Ends a request: its final event (finish reason CANCELLED when its caller left or
        the engine is closing), or the error."""
        if sequence.finished:
            return
        sequence.finished = True
        completion_tokens = 0
        if tokens is not None and error is None:
            now = time.perf_counter()
            final = TextFinal(
                finish_reason=tokens.finish(cancelled=sequence.cancelled or closing),
                prompt_tokens=len(sequence.prompt_ids),
                completion_tokens=tokens.completion_tokens,
                seed=sequence.params.seed,
                queued_ms=(sequence.started - sequence.submitted) * 1000,
                inference_ms=(now - sequence.started) * 1000,
            )
            completion_tokens = final.completion_tokens
            sequence.emit(final)
        self._finished(sequence, error, tokens=completion_tokens)
