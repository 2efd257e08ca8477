"""A text engine over transformers' `generate`, one request at a time.

generate() runs on a dedicated worker thread, so the event loop (health checks, other
RPCs) keeps answering. Tokens travel back through a streamer as they are produced; a
stopping criterion polled at every decoding step ends the run when the caller has gone
away, so a cancelled request frees the model within a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from genserve.server.engine.channel import Cancelled
from genserve.server.engine.contract import CLOSE_WAIT_S, EngineStats, module_bytes
from genserve.server.engine.rng import seeded_global_generator
from genserve.server.engine.serial import Job, SerialEngine
from genserve.server.text.token_stream import (
    TokenStream,
    as_tensor,
    check_fits,
    context_length,
    encode_chat,
    eos_token_ids,
    hf_token_stream,
)
from genserve.server.text.types import SamplingParams, TextEvent, TextFinal, TextRequest

logger = logging.getLogger(__name__)


class _Streamer(BaseStreamer):
    """Hands generate()'s new tokens to a TokenStream (skipping the prompt it sends first)."""

    def __init__(self, tokens: TokenStream) -> None:
        self._tokens = tokens
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token_id in value.flatten().tolist():
            self._tokens.push(token_id)

    def end(self) -> None:
        pass


class _StopWhen(StoppingCriteria):
    """Ends generation at the next step once the predicate holds."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self._predicate()
        result = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        return result  # type: ignore[return-value]


class SerialTextEngine:
    """Runs one request at a time on the model; others wait in a bounded queue."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        max_queue: int,
    ) -> None:
        self.name = name
        self.memory_bytes = module_bytes(model)
        self._model = model
        self._tokenizer = tokenizer
        self._engine: SerialEngine[tuple[list[int], SamplingParams], TextEvent] = SerialEngine(
            name, self._run, max_queue=max_queue
        )
        self._device = next(model.parameters()).device
        self._eos_token_ids = eos_token_ids(model, tokenizer)
        self._tokens_generated = 0  # written by the model thread only

    @property
    def context_length(self) -> int:
        return context_length(self._model)

    @property
    def ready(self) -> bool:
        return self._engine.ready

    def stats(self) -> EngineStats:
        return replace(self._engine.stats(), tokens_generated=self._tokens_generated)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is queued or running; False on timeout."""
        return self._engine.wait_idle(timeout)

    async def generate(self, request: TextRequest) -> AsyncIterator[TextEvent]:
        prompt_ids = await asyncio.to_thread(encode_chat, self._tokenizer, request)
        check_fits(len(prompt_ids), request.params.max_new_tokens, self.context_length)
        # aclosing: a caller that leaves cancels the job now, not when the loop collects it
        async with contextlib.aclosing(
            self._engine.generate((prompt_ids, request.params))
        ) as events:
            async for event in events:
                yield event

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        return self._engine.close(wait_s)

    def _run(self, work: tuple[list[int], SamplingParams], job: Job[TextEvent]) -> None:
        prompt_ids, params = work
        final = self._generate(as_tensor(prompt_ids), params, job)
        self._tokens_generated += final.completion_tokens
        job.emit(final)

    def _generate(
        self, prompt_ids: torch.Tensor, params: SamplingParams, job: Job[TextEvent]
    ) -> TextFinal:
        # A reader that falls behind makes generate() wait in the streamer (backpressure);
        # one that has gone ends it through the stopping criterion at the next step.
        def deliver(delta: TextEvent) -> None:
            with contextlib.suppress(Cancelled):
                job.emit(delta)

        tokens = hf_token_stream(self._tokenizer, self._eos_token_ids, params, deliver)

        def after_step() -> bool:  # generate() asks once per decoding step
            job.step_done()
            return job.cancelled or tokens.stopped

        stop_when = _StopWhen(after_step)
        input_ids = prompt_ids.to(self._device)
        # generate() samples from torch's global generator: seeded under its lock.
        with seeded_global_generator(params.seed), torch.inference_mode():
            self._model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(params),
                streamer=_Streamer(tokens),
                stopping_criteria=StoppingCriteriaList([stop_when]),
            )
        return TextFinal(
            finish_reason=tokens.finish(cancelled=job.cancelled),
            prompt_tokens=int(prompt_ids.shape[-1]),
            completion_tokens=tokens.completion_tokens,
            seed=params.seed,
            queued_ms=job.queued_ms,
            inference_ms=(time.perf_counter() - job.started) * 1000,
        )

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        base = self._model.generation_config
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=params.do_sample,
            eos_token_id=sorted(self._eos_token_ids),
            pad_token_id=base.pad_token_id if base.pad_token_id is not None else base.eos_token_id,
            bos_token_id=base.bos_token_id,
        )
        if params.do_sample:
            config.temperature = params.temperature
            config.top_k = params.top_k
            config.top_p = params.top_p
        return config
