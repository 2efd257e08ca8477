"""Artifacts in an S3-compatible object store (obstore), for several servers at once.

Objects cannot be appended to, so an artifact is a run of segments, one object per
write, named by its first byte's offset (zero-padded: listing order is byte order).
A watcher on another server reads the segments that the job row says are written.
A re-run checks its bytes against the stored segments as the file writer does; where
they differ the straddling segment is cut short and every later one deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import obstore

from genserve.server.jobs.artifacts import first_difference

OFFSET_DIGITS = 16


@dataclass(frozen=True)
class Segment:
    path: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


class ObjectArtifactStore:
    def __init__(self, store: Any) -> None:
        self._store = store  # an obstore store: S3Store, or MemoryStore in unit tests

    def writer(self, job_id: str) -> ObjectArtifactWriter:
        return ObjectArtifactWriter(self, job_id)

    def segments(self, job_id: str) -> list[Segment]:
        found = [
            Segment(str(meta["path"]), int(str(meta["path"]).rsplit("/", 1)[1]), int(meta["size"]))
            for meta in obstore.list(self._store, prefix=f"{job_id}/").collect()
        ]
        return sorted(found, key=lambda segment: segment.start)

    def read(self, job_id: str, offset: int, length: int) -> bytes:
        return self._read(self.segments(job_id), offset, length)

    def _read(self, segments: list[Segment], offset: int, length: int) -> bytes:
        end, parts = offset + length, list[bytes]()
        for segment in segments:
            if segment.end <= offset or segment.start >= end:
                continue
            start, stop = max(offset, segment.start), min(end, segment.end)
            if start != offset + sum(len(p) for p in parts):
                break  # a gap: what follows it is not readable yet
            parts.append(
                bytes(
                    obstore.get_range(
                        self._store, segment.path, start=start - segment.start,
                        end=stop - segment.start,
                    )
                )
            )  # fmt: skip
        return b"".join(parts)

    def put(self, job_id: str, offset: int, data: bytes) -> None:
        obstore.put(self._store, f"{job_id}/{offset:0{OFFSET_DIGITS}d}", data)

    def cut(self, job_id: str, segments: list[Segment], at: int) -> list[Segment]:
        """Keeps bytes [0, at): later segments go, the one across `at` is cut short."""
        kept, dropped = [], []
        for segment in segments:
            if segment.end <= at:
                kept.append(segment)
            elif segment.start >= at:
                dropped.append(segment.path)
            else:
                prefix = self._read([segment], segment.start, at - segment.start)
                obstore.put(self._store, segment.path, prefix)
                kept.append(Segment(segment.path, segment.start, len(prefix)))
        if dropped:
            obstore.delete(self._store, dropped)
        return kept

    def delete(self, job_id: str) -> None:
        paths = [segment.path for segment in self.segments(job_id)]
        if paths:
            obstore.delete(self._store, paths)

    def exists(self, job_id: str) -> bool:
        return bool(self.segments(job_id))


class ObjectArtifactWriter:
    def __init__(self, artifacts: ObjectArtifactStore, job_id: str) -> None:
        self._artifacts = artifacts
        self._job_id = job_id
        # What an earlier attempt left: checked, not trusted, until this run matches it.
        self._earlier = artifacts.segments(job_id)

    @property
    def _earlier_size(self) -> int:
        return self._earlier[-1].end if self._earlier else 0

    def write(self, offset: int, data: bytes) -> int | None:
        diverged: int | None = None
        overlap = max(0, min(len(data), self._earlier_size - offset))
        if overlap:
            stored = self._artifacts._read(self._earlier, offset, overlap)
            same = first_difference(stored, data[:overlap])
            if same is None:
                data, offset = data[overlap:], offset + overlap
            else:
                diverged = offset + same
                self._earlier = self._artifacts.cut(self._job_id, self._earlier, diverged)
                data, offset = data[same:], diverged
        if data:
            self._artifacts.put(self._job_id, offset, data)
        return diverged

    def finish(self, size: int) -> int | None:
        if self._earlier_size <= size:
            return None
        self._earlier = self._artifacts.cut(self._job_id, self._earlier, size)
        return size

    def close(self) -> None:
        pass
