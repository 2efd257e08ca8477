"""One GGUF model and one llama.cpp context, through llama-cpp-python's low-level API.

Only the engine's scheduler thread calls the context (llama.cpp contexts are not
thread-safe); tokenizing, rendering the chat template and reading pieces only touch the
vocabulary, which llama.h documents as thread-safe, so requests are encoded on the event
loop's worker threads. ctypes releases the GIL for every call, so the event loop keeps
serving while a step decodes.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from genserve.server.text.types import ChatTurn, SamplingParams

logger = logging.getLogger(__name__)

# llama_sampler_init_dist takes a 32-bit seed, and 0xFFFFFFFF there means "random".
_DIST_SEED_MODULUS = 0xFFFFFFFF
# Tokens per llama.cpp graph. Its CPU flash attention picks a tiled kernel for 64 or more
# query rows, whose rounding differs from the row-by-row kernel: ubatches kept below 64
# give every sequence the same arithmetic alone or in any batch (greedy batched equals
# greedy solo). A step with more tokens runs as several graphs over the same weights.
MAX_UBATCH_TOKENS = 63
# The KV cache's element type (llama.cpp's default, f16).
_KV_BYTES_PER_VALUE = 2


@dataclass(frozen=True)
class ContextShape:
    """How big the context is: these fix its memory when it is created."""

    kv_tokens: int  # KV cells shared by every sequence (the engine's token budget)
    max_sequences: int  # sequence ids: running requests plus cached prefixes
    step_tokens: int  # tokens one llama_decode takes: decoding rows plus prefill chunks
    threads: int
    unified: bool = True  # one pool of cells; else a stream per sequence id


@dataclass(frozen=True)
class BatchToken:
    token: int
    position: int
    sequence: int
    wants_logits: bool


_GGML_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level; the rest: debug


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log (every tensor at load, the context's shape) into ours, not stderr."""
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        logger.log(_GGML_LOG_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", message)


class DecodeError(RuntimeError):
    pass


class Sampler:
    """A request's sampler chain: top-k, top-p, temperature and a seeded draw; or greedy."""

    def __init__(self, params: SamplingParams) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if params.do_sample and params.temperature > 0:
            # top-k first: top-p then sorts k candidates, not the whole vocabulary
            if params.top_k > 0:
                llama_cpp.llama_sampler_chain_add(
                    chain, llama_cpp.llama_sampler_init_top_k(params.top_k)
                )
            if params.top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(
                    chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1)
                )
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_temp(params.temperature)
            )
            seed = params.seed % _DIST_SEED_MODULUS
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        else:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        self._chain = chain

    def sample(self, context: llama_cpp.llama_context_p, batch_index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self._chain, context, batch_index))

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class LlamaRuntime:
    def __init__(self, gguf: Path, shape: ContextShape) -> None:
        llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        self.shape = shape
        model_params = llama_cpp.llama_model_default_params()
        # No extra (repacked) weight buffers: on a CPU with AMX, a native build repacks the
        # weights for ggml's AMX kernel, whose tile config is invalid (ldtilecfg faults:
        # llama.cpp #20824) and whose arithmetic depends on the batch's row count. Plain
        # CPU buffers (mmap'd, no copy) run the same kernels on every x86 machine.
        model_params.use_extra_bufts = False
        self._model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.kv_tokens
        params.n_batch = shape.step_tokens
        params.n_ubatch = min(shape.step_tokens, MAX_UBATCH_TOKENS)
        params.n_seq_max = shape.max_sequences
        params.n_threads = shape.threads
        params.n_threads_batch = shape.threads
        # One pool of cells for every sequence (no fixed slots), and cells can be shared
        # between sequences: what a common prefix needs. Or (unified off) a stream of
        # cells per sequence, as llama-server's slots: attention then reads only the
        # sequence's own cells, and a prefix is copied into a stream, not shared.
        params.kv_unified = shape.unified
        params.no_perf = True
        self.context = llama_cpp.llama_init_from_model(self._model, params)
        if not self.context:
            llama_cpp.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context for {gguf}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._memory = llama_cpp.llama_get_memory(self.context)
        self._batch = llama_cpp.llama_batch_init(shape.step_tokens, 0, 1)
        self._pieces: dict[int, bytes] = {}
        cells = int(llama_cpp.llama_n_ctx(self.context))
        per_sequence = cells if shape.unified else cells // shape.max_sequences
        self.context_length = min(per_sequence, int(llama_cpp.llama_model_n_ctx_train(self._model)))
        self.memory_bytes = int(llama_cpp.llama_model_size(self._model)) + self._kv_bytes()
        self._chat, self._history = self._chat_formatters()

    # -- the vocabulary (any thread) ------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        # special tokens in the rendered template (<|im_start|>) are parsed as such
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
        if count < 0:
            raise ValueError(f"prompt needs {-count} tokens, more than {capacity}")
        return list(tokens[:count])

    def piece(self, token: int) -> bytes:
        """The token's bytes; special tokens render as nothing."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._render(token, special=False)
        return cached

    @property
    def vocabulary_size(self) -> int:
        return int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def render_chat(self, turns: Sequence[ChatTurn], *, generation_prompt: bool = True) -> str:
        """The prompt text through the GGUF's own chat template, as llama-server renders it."""
        messages = [{"role": t.role, "content": t.content} for t in turns]
        formatter = self._chat if generation_prompt else self._history
        if formatter is None:
            return "\n".join(t.content for t in turns)
        return str(formatter(messages=messages).prompt)  # type: ignore[arg-type]

    # -- the context (the scheduler thread only) -------------------------------------------

    def decode(self, tokens: Sequence[BatchToken]) -> None:
        batch = self._batch
        for i, item in enumerate(tokens):
            batch.token[i] = item.token
            batch.pos[i] = item.position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = item.sequence
            batch.logits[i] = item.wants_logits
        batch.n_tokens = len(tokens)
        status = llama_cpp.llama_decode(self.context, batch)
        if status != 0:
            raise DecodeError(f"llama_decode returned {status} for {len(tokens)} tokens")

    def forget(self, sequence: int) -> None:
        """Frees the sequence's KV cells (those it shares stay with the other owners)."""
        llama_cpp.llama_memory_seq_rm(self._memory, sequence, -1, -1)

    def share(self, source: int, target: int, length: int) -> None:
        """Makes the target sequence own the source's first `length` cells too: no copy in
        one pool; across streams, a copy of the source's whole stream (llama.cpp copies
        only whole streams), which holds exactly its prefix, before the next decode."""
        if self.shape.unified:
            llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, length)
        else:
            llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, False)

    def close(self) -> None:
        if self.context:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.context)
            llama_cpp.llama_model_free(self._model)
            self.context = None

    # -- helpers ----------------------------------------------------------------------------

    def _render(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if length < 0:  # longer than 64 bytes: -length is what it needs
            buffer = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -length, 0, special)
        return buffer.raw[:length]

    def _token_text(self, token: int) -> str:
        return self._render(token, special=True).decode("utf-8", errors="replace")

    def _chat_formatters(self) -> tuple[Jinja2ChatFormatter | None, Jinja2ChatFormatter | None]:
        template = llama_cpp.llama_model_chat_template(self._model, None)
        if not template:
            return None, None
        source = template.decode("utf-8")
        bos = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        eos = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
        return (
            Jinja2ChatFormatter(source, eos_token=eos, bos_token=bos),
            Jinja2ChatFormatter(source, eos_token=eos, bos_token=bos, add_generation_prompt=False),
        )

    def _kv_bytes(self) -> int:
        layers = llama_cpp.llama_model_n_layer(self._model)
        heads = llama_cpp.llama_model_n_head(self._model)
        kv_heads = llama_cpp.llama_model_n_head_kv(self._model)
        head_dim = llama_cpp.llama_model_n_embd(self._model) // max(heads, 1)
        per_token = layers * 2 * kv_heads * head_dim * _KV_BYTES_PER_VALUE
        return int(self.shape.kv_tokens * per_token)
