"""C2PA content credentials: a signed manifest in each PNG, JPEG, WebP, WAV and MP4.

On when a signing certificate chain and its key are configured (`[c2pa]` settings,
GENSERVE_C2PA__*). The key is read like the upstream keys, from a file or an environment
variable, never inline; it is read once when a model loads and never logged (the signer's
repr leaves it out). The manifest asserts `c2pa.created` (c2pa.actions) with the IPTC
digital source type trainedAlgorithmicMedia, genserve and its version as the software
agent, and the model (and engine) in the action's parameters; no thumbnail.

C2PA signs a whole file (its hard binding is a hash over the finished bytes), so a signed
file is held: `SigningOutput` takes the encoder's writes, and when the run finishes the
bytes are signed and sent as chunks; the final event's sha256 and total_bytes are those of
the signed bytes. A streamed WAV's placeholder sizes are set to the real ones first.
Meshes (OBJ, PLY) have no C2PA binding: they stream unsigned, as without signing.
c2pa is imported only when signing is configured.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SIGNED_MODALITIES = frozenset({"image", "audio", "video"})  # PNG/JPEG/WebP, WAV, MP4
Algorithm = Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"]
UNKNOWN_RIFF_SIZE = 0xFFFFFFFF
# No thumbnail in the manifest: c2pa's default re-encodes one (a 64x64 PNG grew by 270 KB
# and took 50 ms to sign with it; 3 KB and 2 ms without).
BUILDER_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class C2paSettings(BaseModel):
    """C2PA signing: off unless a certificate chain and its key are named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path | None = Field(
        None, description="PEM signing certificate chain (leaf first); C2PA signing on"
    )
    key_file: Path | None = Field(None, description="file holding the PEM private key")
    key_env: str | None = Field(None, description="environment variable holding the PEM key")
    alg: Algorithm = Field("es256", description="signing algorithm of the key")
    tsa_url: str | None = Field(None, description="RFC 3161 timestamp authority (optional)")

    @model_validator(mode="after")
    def _a_chain_and_one_key(self) -> C2paSettings:
        if self.key_file and self.key_env:
            raise ValueError("c2pa: name the key's environment variable or its file, not both")
        has_key = bool(self.key_file or self.key_env)
        if bool(self.cert_file) != has_key:
            raise ValueError("c2pa: signing needs both cert_file and key_file (or key_env)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def private_key(self) -> str:
        """Read when a model loads (never at import, never logged)."""
        if self.key_env:
            value = os.environ.get(self.key_env)
            if not value:
                raise ValueError(f"c2pa: environment variable {self.key_env} is not set")
            return value
        assert self.key_file is not None
        key = self.key_file.read_text().strip()
        if not key:
            raise ValueError(f"c2pa: key file {self.key_file} is empty")
        return key


@dataclass(frozen=True)
class C2paSigner:
    """Signs whole files; the key is held here, out of repr."""

    chain: str
    alg: Algorithm
    tsa_url: str | None
    _key: str = field(repr=False)

    def sign(self, data: bytes, mime: str, manifest: dict[str, Any]) -> bytes:
        import c2pa  # only where signing is on

        info = c2pa.C2paSignerInfo(self.alg, self.chain.encode(), self._key.encode(), self.tsa_url)
        context = c2pa.Context(settings=c2pa.Settings.from_dict(BUILDER_SETTINGS))
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context) as builder:
            signed = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), signed)
        return signed.getvalue()


def signer_from(settings: C2paSettings) -> C2paSigner | None:
    """The configured signer (None: signing off). Checked here by signing a tiny PNG, so
    a bad chain or key fails the model's load, not its first request."""
    if not settings.enabled:
        return None
    assert settings.cert_file is not None
    signer = C2paSigner(
        settings.cert_file.read_text(), settings.alg, settings.tsa_url, settings.private_key()
    )
    signer.sign(_TINY_PNG, "image/png", manifest_for({"genserve_version": "check"}))
    logger.info("C2PA signing on: certificate chain %s", settings.cert_file)
    return signer


def manifest_for(fields: dict[str, Any]) -> dict[str, Any]:
    """The manifest of one file, from its generation record's fields."""
    version = str(fields.get("genserve_version", "unknown"))
    agent = {"name": "genserve", "version": version}
    parameters = {"model": fields.get("model"), "engine": fields.get("engine")}
    action = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": agent,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
    }
    return {
        "claim_generator_info": [agent],
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}],
    }


def mime_of(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return None


def with_real_riff_sizes(wav: bytes) -> bytes:
    """A streamed WAV's placeholder sizes (0xFFFFFFFF) set to the real ones: a whole
    file's RIFF size, and its data chunk's (the last chunk) running to the end."""
    if struct.unpack_from("<I", wav, 4)[0] != UNKNOWN_RIFF_SIZE:
        return wav
    out = bytearray(wav)
    struct.pack_into("<I", out, 4, len(wav) - 8)
    at = 12
    while at + 8 <= len(out):
        kind, size = bytes(out[at : at + 4]), struct.unpack_from("<I", out, at + 4)[0]
        if kind == b"data":
            if size == UNKNOWN_RIFF_SIZE:
                struct.pack_into("<I", out, at + 4, len(out) - at - 8)
            break
        at += 8 + size + (size & 1)
    return bytes(out)


class Output(Protocol):
    """The run's chunked output (media/run.py ChunkedOutput)."""

    bytes_sent: int

    @property
    def sha256(self) -> str: ...
    def write_all(self, data: bytes | memoryview) -> None: ...
    def end(self) -> None: ...


OutputT = TypeVar("OutputT", bound=Output)


class SigningOutput(io.RawIOBase):
    """Stands in for the run's output while the file is made, holding it whole; at the
    run's end, `end` signs it and sends the signed bytes through the real output (chunked
    and hashed there, so the final event's sha256 and size are the signed file's)."""

    def __init__(self, output: Output, signer: C2paSigner, fields: dict[str, Any]) -> None:
        super().__init__()
        self._output = output
        self._signer = signer
        self._fields = fields
        self._held = bytearray()

    @property
    def bytes_sent(self) -> int:
        return self._output.bytes_sent

    @property
    def sha256(self) -> str:
        return self._output.sha256

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._held += view
        return len(view)

    def write_all(self, data: bytes | memoryview) -> None:
        self.write(data)

    def flush_remainder(self) -> None:
        """A head or a sentence that would leave now: held with the rest."""

    def end(self) -> None:
        if not self._held:
            return
        data = bytes(self._held)
        self._held.clear()
        mime = mime_of(data)
        if mime is None:
            logger.warning("C2PA: not a signable format; sent unsigned")
        else:
            if mime == "audio/wav":
                data = with_real_riff_sizes(data)
            data = self._signer.sign(data, mime, manifest_for(self._fields))
        self._output.write_all(data)
        self._output.end()


def signing_output(output: OutputT, record: Any) -> OutputT | SigningOutput:
    """The hook: the run's output, or one that holds the file to sign it whole."""
    signer = getattr(record, "signer", None)
    if signer is None or record.fields.get("modality") not in SIGNED_MODALITIES:
        return output
    return SigningOutput(output, signer, record.fields)


# A 1x1 RGB PNG, signed once at load to check the chain and key.
_TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415478da63f8ffff3f0005fe02fea7d6a4e40000000049454e44ae426082"
)
