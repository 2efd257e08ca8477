"""Token ids in, text deltas out, without splitting multi-byte characters.

The prefix/read offset scheme of TGI and vLLM: decode a small window of recent tokens
twice and emit the difference, holding back while the tail is an incomplete character.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be empty)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """At the end: text held back for a character that never completed."""
        held = self._decode(self._ids[self._prefix_offset :])
        shown = self._decode(self._ids[self._prefix_offset : self._read_offset])
        self._prefix_offset = self._read_offset = len(self._ids)
        return held[len(shown) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


class ByteDetokenizer:
    """For tokenizers whose pieces are raw bytes (llama.cpp's): an incremental UTF-8
    decoder holds back a character split across tokens until its last byte arrives."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return str(self._decoder.decode(self._piece(token_id)))

    def flush(self) -> str:
        """At the end: the bytes of a character the output stopped in the middle of."""
        return str(self._decoder.decode(b"", final=True))
