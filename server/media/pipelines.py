"""Loading a media pipeline: the model, where it runs, and the worker that serialises it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genserve.server.worker import SerialWorker


@dataclass
class LoadedPipeline:
    """A pipeline and the single worker thread that runs it (pipelines are not
    re-entrant: diffusers schedulers keep per-call state)."""

    pipeline: Any
    worker: SerialWorker
    defaults: Any

    @property
    def pending_requests(self) -> int:
        return self.worker.pending

    def close(self) -> None:
        self.worker.close()
