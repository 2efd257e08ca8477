"""The keys in force: loaded from the keys file, reloaded on SIGHUP or when it changes.

A reload that fails (a file mid-edit, a typo) keeps the keys in force and says why in
the log; a revoked key stops working on the first good reload. Verified secrets are
remembered by their SHA-256 until the next reload, so only a key's first call pays for
scrypt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from pathlib import Path

from pydantic import ValidationError

from genserve.server.auth.hashing import key_id_of, verify_secret
from genserve.server.auth.keys import KeyEntry, load_keys

logger = logging.getLogger(__name__)


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_id: dict[str, KeyEntry] = {}
        self._by_subject: dict[str, KeyEntry] = {}
        self._verified: dict[str, bytes] = {}  # key id -> SHA-256 of a secret that passed
        self._stamp: tuple[int, int] | None = None
        if not self.reload():
            raise ValueError(f"cannot load the keys file {path}")

    def __len__(self) -> int:
        return len(self._by_id)

    def reload(self) -> bool:
        """Reads the file again; False (keys unchanged) when it cannot be read."""
        try:
            stamp = self._file_stamp()
            keys = load_keys(self.path)
        except (OSError, ValidationError, ValueError) as error:
            logger.error(
                "keys file %s not loaded, keeping %d keys: %s", self.path, len(self), error
            )
            return False
        self._by_id = {key.id: key for key in keys.keys}
        self._by_subject = {key.subject: key for key in keys.keys if key.subject is not None}
        self._verified = {}
        self._stamp = stamp
        logger.info("keys file %s: %d keys", self.path, len(self._by_id))
        return True

    def reload_if_changed(self) -> bool:
        try:
            changed = self._file_stamp() != self._stamp
        except OSError:
            changed = True  # removed or unreadable: reload() logs it and keeps the keys
        return self.reload() if changed else False

    def _file_stamp(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_mtime_ns, stat.st_size

    def by_subject(self, subject: str) -> KeyEntry | None:
        return self._by_subject.get(subject)

    async def authenticate(self, secret: str) -> KeyEntry | None:
        """The key a secret belongs to, or None. scrypt runs in a worker thread."""
        key_id = key_id_of(secret)
        entry = self._by_id.get(key_id) if key_id is not None else None
        if entry is None or entry.hash is None:
            return None
        fingerprint = hashlib.sha256(secret.encode()).digest()
        known = self._verified.get(entry.id)
        if known is not None and hmac.compare_digest(known, fingerprint):
            return entry
        stored = entry.hash
        if not await asyncio.to_thread(verify_secret, secret, stored):
            return None
        key_id = entry.id
        if self._by_id.get(key_id) is not entry:  # revoked (or replaced) while we hashed
            return None
        self._verified[key_id] = fingerprint
        return entry
