"""A text engine over a transformers causal LM, one generation at a time.

generate() runs on a dedicated worker thread, so the event loop (health checks, other
RPCs) keeps answering. Tokens travel back through a streamer as they are produced;
a stopping criterion polled at every decoding step ends the run when the caller has
gone away, so a cancelled request frees the model within a step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from server.errors import InvalidArgument
from server.text.detokenizer import IncrementalDetokenizer
from server.text.stop_sequences import StopSequenceMatcher
from server.text.types import (
    FinishReason,
    SamplingParams,
    TextDelta,
    TextEvent,
    TextFinal,
    TextRequest,
)
from server.worker import Job, SerialWorker

logger = logging.getLogger(__name__)

Emit = Callable[[TextEvent], None]


class _TokenSink(BaseStreamer):
    """Receives token ids from generate() and emits text deltas."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        eos_token_ids: set[int],
        matcher: StopSequenceMatcher,
        emit: Emit,
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._eos_token_ids = eos_token_ids
        self._matcher = matcher
        self._emit = emit
        self._prompt_seen = False
        self.completion_tokens = 0
        self.saw_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        for token_id in value.flatten().tolist():
            if self._matcher.matched:  # generate() may run a step past the stop sequence
                return
            self.completion_tokens += 1
            if token_id in self._eos_token_ids:
                self.saw_eos = True
                continue
            text = self._matcher.feed(self._detokenizer.push(token_id))
            if text:
                self._emit(TextDelta(text, self.completion_tokens))

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
        self._model = model
        self._tokenizer = tokenizer
        self._worker = SerialWorker(f"text-{name}", max_queue)
        self._device = next(model.parameters()).device
        self._eos_token_ids = _eos_token_ids(model, tokenizer)
        self.last_final: TextFinal | None = None  # the most recent run's outcome

    @property
    def context_length(self) -> int:
        return int(getattr(self._model.config, "max_position_embeddings", 2048))

    @property
    def pending_requests(self) -> int:
        return self._worker.pending

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is queued or running; False on timeout."""
        return self._worker.wait_idle(timeout)

    async def generate(self, request: TextRequest) -> AsyncGenerator[TextEvent, None]:
        prompt_ids = await asyncio.to_thread(self._encode, request)
        self._check_fits(prompt_ids.shape[-1], request.params.max_new_tokens)

        def run(job: Job) -> None:
            final = self._generate(prompt_ids, request.params, job)
            self.last_final = final
            job.emit(final)

        async for event in self._worker.run(run):
            yield event

    def close(self) -> None:
        self._worker.close()

    # -- on the worker thread -----------------------------------------------------------

    def _generate(self, prompt_ids: torch.Tensor, params: SamplingParams, job: Job) -> TextFinal:
        matcher = StopSequenceMatcher(params.stop)
        sink = _TokenSink(self._tokenizer, self._eos_token_ids, matcher, job.emit)
        stop_when = _StopWhen(lambda: job.cancelled.is_set() or matcher.matched)
        torch.manual_seed(params.seed)
        input_ids = prompt_ids.to(self._device)
        with torch.inference_mode():
            self._model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=self._generation_config(params),
                streamer=sink,
                stopping_criteria=StoppingCriteriaList([stop_when]),
            )
        if job.cancelled.is_set():
            reason = FinishReason.CANCELLED
        elif matcher.matched or sink.saw_eos:
            reason = FinishReason.STOP
        else:
            reason = FinishReason.LENGTH
        if not matcher.matched and reason is not FinishReason.CANCELLED:
            tail = matcher.flush()
            if tail:
                job.emit(TextDelta(tail, sink.completion_tokens))
        return TextFinal(
            finish_reason=reason,
            prompt_tokens=int(prompt_ids.shape[-1]),
            completion_tokens=sink.completion_tokens,
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

    # -- helpers ---------------------------------------------------------------------

    def _encode(self, request: TextRequest) -> torch.Tensor:
        turns = [{"role": t.role, "content": t.content} for t in request.messages]
        if self._tokenizer.chat_template:
            encoded = self._tokenizer.apply_chat_template(
                turns, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            )
            return cast(torch.Tensor, cast(Any, encoded)["input_ids"])
        text = "\n".join(t["content"] for t in turns)
        plain: torch.Tensor = self._tokenizer(text, return_tensors="pt")["input_ids"]
        return plain

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.context_length:
            raise InvalidArgument(
                "prompt",
                f"{prompt_tokens} prompt tokens plus max_new_tokens={max_new_tokens} exceed "
                f"the model's context of {self.context_length} tokens",
            )


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
