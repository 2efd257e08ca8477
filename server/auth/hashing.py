"""API-key secrets and their salted hashes (scrypt, from the standard library).

A secret names its key: `gsk.<key id>.<random>`, so checking it costs one hash, not one
per key in the file. Only the salted hash is stored; the secret is printed once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "gsk"
SCHEME = "scrypt"
# ~16 MiB and tens of milliseconds per check: cheap for one caller, dear for a guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
SECRET_BYTES = 32


def new_secret(key_id: str) -> str:
    return f"{PREFIX}.{key_id}.{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id_of(secret: str) -> str | None:
    """The key id a secret names; None for anything not shaped like one of ours."""
    parts = secret.split(".", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=64 * 1024 * 1024
    )


def hash_secret(secret: str) -> str:
    """`scrypt$n$r$p$salt$hash`, salt and hash in base64."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Constant time in the secret: the digests are compared with hmac.compare_digest."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(secret, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_hash(stored: str) -> str:
    """Validates a stored hash's shape (for the keys file's loader)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"not a {SCHEME} hash: expected {SCHEME}$n$r$p$salt$hash")
    return stored
