"""The keys file: one JSON document, `{"keys": [...]}`, read by the server and the bridge.

Each key has an id (logged, never secret), the salted hash of its secret, what it may
call (models and/or modalities; neither means everything) and its budget per minute per
modality in that modality's cost units (each spec's `cost`: text tokens, image
width x height x steps, ...). An entry may name a client-certificate `subject` instead of
(or as well as) a hash: under mTLS, that certificate's caller gets the entry's rules.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genserve.contract import Modality
from genserve.server.auth.hashing import check_hash, hash_secret, new_secret

KEY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# The contract's modality names: the CLI and the bridge read keys without the model stack.
ModalityName: TypeAlias = Modality
MODALITY_NAMES: tuple[str, ...] = tuple(m.value for m in Modality)


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=KEY_ID_PATTERN)
    hash: str | None = Field(None, description="scrypt hash of the secret")
    subject: str | None = Field(None, description="a client certificate's subject (mTLS)")
    models: tuple[str, ...] = Field((), description="model names it may call")
    modalities: tuple[ModalityName, ...] = Field((), description="modalities it may call")
    budget_per_minute: dict[ModalityName, float] = Field(
        default_factory=dict, description="per modality, in its cost units; absent: unlimited"
    )
    created: str | None = None

    @field_validator("hash")
    @classmethod
    def _hash_shape(cls, value: str | None) -> str | None:
        return check_hash(value) if value is not None else None

    @field_validator("budget_per_minute")
    @classmethod
    def _positive(cls, value: dict[ModalityName, float]) -> dict[ModalityName, float]:
        for modality, units in value.items():
            if units <= 0:
                raise ValueError(f"budget for {modality} must be > 0")
        return value

    @model_validator(mode="after")
    def _some_credential(self) -> KeyEntry:
        if self.hash is None and self.subject is None:
            raise ValueError(f"key {self.id}: needs a hash or a subject")
        return self

    def allows(self, modality: str, model: str | None) -> bool:
        """Models or modalities: either list admits the call; both empty admit anything."""
        if not self.models and not self.modalities:
            return True
        return modality in self.modalities or (model is not None and model in self.models)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> KeysFile:
        ids = [key.id for key in self.keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate key ids: {', '.join(duplicates)}")
        return self


def load_keys(path: Path) -> KeysFile:
    """Raises OSError or pydantic's ValidationError; the caller decides what that means."""
    text = path.read_text()
    return KeysFile.model_validate_json(text) if text.strip() else KeysFile()


def save_keys(path: Path, keys: KeysFile) -> None:
    """Atomically (a temporary file renamed over the old one), readable by the owner only:
    a server reloading mid-write never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps(keys.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(document)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def create_key(
    path: Path,
    key_id: str,
    models: tuple[str, ...] = (),
    modalities: tuple[ModalityName, ...] = (),
    budget_per_minute: dict[ModalityName, float] | None = None,
) -> str:
    """Appends a new key to the file (created if absent) and returns its secret, which is
    stored nowhere."""
    if not re.match(KEY_ID_PATTERN, key_id):
        raise ValueError(f"key id {key_id!r}: letters, digits, '-' and '_' only, 1-64")
    keys = load_keys(path) if path.exists() else KeysFile()
    if any(key.id == key_id for key in keys.keys):
        raise ValueError(f"a key named {key_id!r} already exists in {path}")
    secret = new_secret(key_id)
    entry = KeyEntry(
        id=key_id,
        hash=hash_secret(secret),
        models=models,
        modalities=modalities,
        budget_per_minute=budget_per_minute or {},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    save_keys(path, KeysFile(keys=[*keys.keys, entry]))
    return secret


def revoke_key(path: Path, key_id: str) -> bool:
    """Removes a key; False when there was none of that id."""
    keys = load_keys(path)
    kept = [key for key in keys.keys if key.id != key_id]
    if len(kept) == len(keys.keys):
        return False
    save_keys(path, KeysFile(keys=kept))
    return True
