"""Shared prompt prefixes: which token prefixes have their KV cells held, and by which
sequence id.

Most requests start with the same system prompt in the same chat template. Its cells
are prefilled once into a sequence id of their own, then shared (llama_memory_seq_cp, no
copy) with every request that starts with it. Requests that arrive while a prefix is
still being prefilled wait for it rather than compute it again, which is what cuts time
to first token when many arrive at once. Idle prefixes are evicted least recently used
first when their ids or cells are wanted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class CachedPrefix:
    tokens: tuple[int, ...]
    sequence: int  # the sequence id that owns its cells
    filled: int = 0  # tokens prefilled so far
    waiting: list[Any] = field(default_factory=list)  # requests that start once it is filled
    last_used: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.filled == len(self.tokens)

    @property
    def remaining(self) -> Sequence[int]:
        return self.tokens[self.filled :]

    def starts(self, prompt: Sequence[int]) -> bool:
        n = len(self.tokens)
        return len(prompt) > n and tuple(prompt[:n]) == self.tokens


class PrefixCache:
    def __init__(self, sequence_ids: Sequence[int]) -> None:
        self._free_ids = list(sequence_ids)
        self._entries: list[CachedPrefix] = []

    def __iter__(self) -> Iterator[CachedPrefix]:
        return iter(self._entries)

    @property
    def cells(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    def longest_match(self, prompt: Sequence[int]) -> CachedPrefix | None:
        matches = [e for e in self._entries if e.starts(prompt)]
        return max(matches, key=lambda e: len(e.tokens), default=None)

    def add(self, tokens: Sequence[int]) -> CachedPrefix | None:
        """A new, empty entry; None when every prefix id is taken."""
        if not self._free_ids:
            return None
        entry = CachedPrefix(tuple(tokens), self._free_ids.pop())
        self._entries.append(entry)
        return entry

    def idle(self) -> list[CachedPrefix]:
        """Entries nobody waits for (half-filled ones too: their requests left), least
        recently used first: the ones to evict."""
        idle = [e for e in self._entries if not e.waiting]
        return sorted(idle, key=lambda e: e.last_used)

    def filling(self) -> list[CachedPrefix]:
        return [e for e in self._entries if not e.ready]

    def remove(self, entry: CachedPrefix) -> None:
        self._entries.remove(entry)
        self._free_ids.append(entry.sequence)

    def clear(self) -> list[CachedPrefix]:
        removed = list(self._entries)
        for entry in removed:
            self.remove(entry)
        return removed
