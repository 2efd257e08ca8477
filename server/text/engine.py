"""The boundary between the text servicer and whatever runs the model.

An engine takes a validated TextRequest and yields TextDelta events as tokens are
produced, then one TextFinal. Closing the iterator early (the caller cancelled) must
stop the model within a few decoding steps. A batching engine can replace the
one-at-a-time engine behind this interface without the servicer changing.
"""

from __future__ import annotations

from typing import Protocol

from genserve.server.engine.contract import Engine
from genserve.server.text.types import TextEvent, TextRequest


class TextEngine(Engine[TextRequest, TextEvent], Protocol):
    """The engine contract, plus what text adds: the context it can take."""

    @property
    def context_length(self) -> int: ...
