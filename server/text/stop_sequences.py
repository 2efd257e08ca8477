"""Stop sequences over streamed text.

Text that could still turn into a stop sequence is held back, so a caller never sees
half of a stop sequence that later completes.
"""

from __future__ import annotations


class StopSequenceMatcher:
    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._pending = ""
        self.matched = False

    def feed(self, delta: str) -> str:
        """Add text; return what is safe to emit. Sets `matched` at a stop sequence."""
        if not self._stop:
            return delta
        if self.matched:  # everything after a stop sequence is dropped
            return ""
        self._pending += delta
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.matched = True
            safe, self._pending = self._pending[: min(hits)], ""
            return safe
        held = self._longest_partial_match()
        cut = len(self._pending) - held
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        return safe

    def flush(self) -> str:
        """At the end of generation, the held-back text is safe after all."""
        rest, self._pending = self._pending, ""
        return rest

    def _longest_partial_match(self) -> int:
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest
