"""The boundary between the text servicer and whatever runs the model.

An engine takes a validated TextRequest and yields TextDelta events as tokens are
produced, then one TextFinal. Closing the iterator early (the caller cancelled) must
stop the model within a few decoding steps. A batching engine can replace the
one-at-a-time engine behind this interface without the servicer changing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from genserve.server.text.types import TextEvent, TextRequest


class TextEngine(Protocol):
    @property
    def context_length(self) -> int: ...

    def generate(self, request: TextRequest) -> AsyncGenerator[TextEvent, None]:
        """Stream the answer. Raises InvalidArgument for a prompt the model cannot take,
        ResourceExhausted when the queue is full."""
        ...

    def close(self) -> None:
        """Stop running work and release the model."""
        ...
