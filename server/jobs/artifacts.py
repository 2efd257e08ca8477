"""The artifact store: each job's bytes, written as its stream is produced.

Files under one directory by default; the ArtifactStore protocol is what an object store
for several servers implements. A re-run after a restart writes through a writer that
checks its bytes against the stored ones instead of overwriting them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class ArtifactWriter(Protocol):
    def write(self, offset: int, data: bytes) -> int | None:
        """Stores data at offset; returns the first offset where it differed from what an
        earlier attempt stored there (the rest is then replaced), else None."""
        ...

    def finish(self, size: int) -> int | None: ...

    def close(self) -> None: ...


class ArtifactStore(Protocol):
    def writer(self, job_id: str) -> ArtifactWriter: ...
    def read(self, job_id: str, offset: int, length: int) -> bytes: ...
    def delete(self, job_id: str) -> None: ...
    def exists(self, job_id: str) -> bool: ...


class FileArtifactStore:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def path(self, job_id: str) -> Path:
        return self.root / job_id  # ids are ours (hex), never a caller's string

    def writer(self, job_id: str) -> FileArtifactWriter:
        return FileArtifactWriter(self.path(job_id))

    def read(self, job_id: str, offset: int, length: int) -> bytes:
        with self.path(job_id).open("rb") as file:
            file.seek(offset)
            return file.read(length)

    def delete(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)

    def exists(self, job_id: str) -> bool:
        return self.path(job_id).exists()


class FileArtifactWriter:
    """Writes with pwrite, unbuffered: a byte counted as written is in the file, so a
    reader in another task (or process) never reads past what is there."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        # Bytes an earlier attempt left: checked, not trusted, until this run matches them.
        self._earlier = os.fstat(self._fd).st_size

    def write(self, offset: int, data: bytes) -> int | None:
        diverged: int | None = None
        overlap = max(0, min(len(data), self._earlier - offset))
        if overlap:
            stored = os.pread(self._fd, overlap, offset)
            same = first_difference(stored, data[:overlap])
            if same is None:
                data, offset = data[overlap:], offset + overlap
            else:
                diverged = offset + same
                os.ftruncate(self._fd, diverged)
                self._earlier = diverged
                data, offset = data[same:], diverged
        if data:
            os.pwrite(self._fd, data, offset)
        return diverged

    def finish(self, size: int) -> int | None:
        """The run's whole file is `size` bytes: what an earlier, longer run left past it
        goes, and `size` is where the two differ."""
        if self._earlier <= size:
            return None
        os.ftruncate(self._fd, size)
        self._earlier = size
        return size

    def close(self) -> None:
        os.close(self._fd)


def first_difference(stored: bytes, data: bytes) -> int | None:
    """The first index where two runs' bytes differ (a shorter `stored` differs at its
    end), else None."""
    if stored == data:
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(stored, data, strict=False)) if a != b),
        min(len(stored), len(data)),
    )
