"""Seeding for code that can only draw from torch's global generator.

Most engines pass a per-request `torch.Generator`, which nothing else touches. Bark's
`generate` and transformers' `generate(do_sample=True)` take none: they draw from the
process-wide generator, which every thread shares. Holding this lock from the seeding to
the last draw is what makes "same seed, same output" hold while other requests run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GLOBAL_GENERATOR = threading.Lock()


@contextmanager
def seeded_global_generator(seed: int) -> Iterator[None]:
    with _GLOBAL_GENERATOR:
        torch.manual_seed(seed)
        yield
