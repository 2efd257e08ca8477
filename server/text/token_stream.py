"""One sequence's tokens becoming text events: detokenization, stop sequences, end of
sequence, token counts and the finish reason. Shared by every text engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from genserve.server.errors import InvalidArgument
from genserve.server.text.detokenizer import IncrementalDetokenizer
from genserve.server.text.stop_sequences import StopSequenceMatcher
from genserve.server.text.types import FinishReason, SamplingParams, TextDelta, TextRequest

Emit = Callable[[TextDelta], None]


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be empty)."""
        ...

    def flush(self) -> str:
        """At the end of generation: text still held back (an incomplete character)."""
        ...


class TokenStream:
    def __init__(
        self,
        detokenizer: Detokenizer,
        is_end_of_sequence: Callable[[int], bool],
        params: SamplingParams,
        emit: Emit,
    ) -> None:
        self._detokenizer = detokenizer
        self._is_end = is_end_of_sequence
        self._matcher = StopSequenceMatcher(params.stop)
        self._max_new_tokens = params.max_new_tokens
        self._emit = emit
        self.completion_tokens = 0
        self.saw_eos = False

    @property
    def stopped(self) -> bool:
        """The sequence needs no more tokens (end of sequence, stop sequence or length)."""
        return (
            self.saw_eos or self._matcher.matched or self.completion_tokens >= self._max_new_tokens
        )

    def push(self, token_id: int) -> None:
        if self.stopped:  # a step past the end (generate() checks its criteria late)
            return
        self.completion_tokens += 1
        if self._is_end(token_id):
            self.saw_eos = True
            return
        text = self._matcher.feed(self._detokenizer.push(token_id))
        if text:
            self._emit(TextDelta(text, self.completion_tokens))

    def finish(self, cancelled: bool) -> FinishReason:
        """The finish reason; releases text held back for a stop sequence that never came."""
        if cancelled:
            return FinishReason.CANCELLED
        if self._matcher.matched or self.saw_eos:
            return FinishReason.STOP
        tail = self._matcher.feed(self._detokenizer.flush())
        if self._matcher.matched:  # the last character completed a stop sequence
            if tail:
                self._emit(TextDelta(tail, self.completion_tokens))
            return FinishReason.STOP
        tail += self._matcher.flush()
        if tail:
            self._emit(TextDelta(tail, self.completion_tokens))
        return FinishReason.LENGTH


def hf_token_stream(
    tokenizer: PreTrainedTokenizerBase, eos_ids: set[int], params: SamplingParams, emit: Emit
) -> TokenStream:
    """A TokenStream over a transformers tokenizer."""
    return TokenStream(IncrementalDetokenizer(tokenizer), eos_ids.__contains__, params, emit)


def encode_chat(tokenizer: PreTrainedTokenizerBase, request: TextRequest) -> list[int]:
    """The prompt's token ids, through the model's chat template when it has one."""
    turns = [{"role": t.role, "content": t.content} for t in request.messages]
    if tokenizer.chat_template:
        encoded: Any = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_dict=True
        )
        return [int(i) for i in encoded["input_ids"]]
    plain: Any = tokenizer("\n".join(t["content"] for t in turns))
    return [int(i) for i in plain["input_ids"]]


def check_fits(prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
    if prompt_tokens + max_new_tokens > context_length:
        raise InvalidArgument(
            "prompt",
            f"{prompt_tokens} prompt tokens plus max_new_tokens={max_new_tokens} exceed "
            f"the model's context of {context_length} tokens",
        )


def context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def as_tensor(token_ids: list[int]) -> torch.Tensor:
    return torch.tensor([token_ids], dtype=torch.long)
