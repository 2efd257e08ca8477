"""C2PA content credentials: a server with a signing certificate (made here, from a test CA
of our own, with `cryptography`) signs every PNG, JPEG, WebP, WAV and MP4 whole; c2pa's
Reader validates each against that CA, one flipped byte of content makes it fail, the
generation record is still there, and the key is in no log line.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from genserve.client.cli import main as cli_main
from genserve.client.provenance import read_c2pa, read_provenance
from genserve.server.manifest import Manifest, load_manifest, manifest_path
from genserve.server.provenance.c2pa_sign import (
    TRAINED_ALGORITHMIC_MEDIA,
    C2paSettings,
    with_real_riff_sizes,
)
from genserve.server.settings import MediaLimits
from tests.media_calls import TEST_CHUNK_SIZE
from tests.server_thread import ServerThread, make_settings
from tests.test_provenance import CASES, call

c2pa = pytest.importorskip("c2pa")

KEY_ENV = "GENSERVE_TEST_C2PA_KEY"
SIGNED = ["png", "jpeg", "webp", "wav-bark", "wav-piper", "mp4"]
MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}


# -- a CA and a C2PA signing certificate ------------------------------------------------


@dataclass(frozen=True)
class SigningPki:
    ca: bytes  # PEM
    chain: bytes  # PEM: the signing certificate, then the CA
    key: bytes  # PEM (PKCS#8) of the signing certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genserve tests"),
        ]
    )


def _usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def make_signing_pki() -> SigningPki:
    """An ES256 CA and a leaf C2PA accepts: digitalSignature key usage, the
    emailProtection EKU, not a CA, with subject and authority key identifiers."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("genserve test C2PA CA"))
        .issuer_name(_name("genserve test C2PA CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("genserve test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningPki(ca.public_bytes(pem), leaf.public_bytes(pem) + ca.public_bytes(pem), key_pem)


# -- servers: one signing, one not, with only the media models --------------------------


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def media_manifest() -> Manifest:
    tiny = load_manifest(manifest_path("tiny"))
    return Manifest(image=tiny.image, audio=tiny.audio, video=tiny.video, mesh=tiny.mesh)


@dataclass
class Signing:
    server: ServerThread
    channel: grpc.Channel
    pki: SigningPki
    log: LogLines
    worker_log: Path  # the worker processes' stderr: they load the models and sign

    def logged(self) -> str:
        return "\n".join(self.log.lines) + "\n" + self.worker_log.read_text(errors="replace")


def with_stderr_to(path: Path, start: Callable[[], ServerThread]) -> ServerThread:
    """Starts the server with fd 2 on a file, so the worker processes it spawns (which
    log there) write their log lines to it; this process's fd 2 is restored after."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("wb") as file:
            os.dup2(file.fileno(), 2)
            return start()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signing]:
    directory = tmp_path_factory.mktemp("c2pa")
    pki = make_signing_pki()
    chain = directory / "chain.pem"
    chain.write_bytes(pki.chain)
    log = LogLines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(log)
    root.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, pki.key.decode())  # the key by its variable's name only
        settings = make_settings(
            directory / "var",
            media=MediaLimits(chunk_size=TEST_CHUNK_SIZE),
            c2pa=C2paSettings(cert_file=chain, key_env=KEY_ENV),
        )
        worker_log = directory / "workers.log"
        server = with_stderr_to(worker_log, ServerThread(settings, media_manifest()).start)
        channel = server.channel()
        try:
            yield Signing(server, channel, pki, log, worker_log)
        finally:
            channel.close()
            server.stop()
            root.removeHandler(log)
            root.setLevel(previous)


def reader_for(pki: SigningPki) -> Any:
    trust = {"verify": {"verify_trust": True}, "trust": {"trust_anchors": pki.ca.decode()}}
    return c2pa.Context(settings=c2pa.Settings.from_dict(trust))


def mime(name: str) -> str:
    return MIMES.get(name, "audio/wav")


def validate(data: bytes, name: str, pki: SigningPki) -> tuple[str | None, list[str], Any]:
    with c2pa.Reader(mime(name), io.BytesIO(data), context=reader_for(pki)) as reader:
        results = reader.get_validation_results() or {}
        failures = [f["code"] for f in results.get("activeManifest", {}).get("failure", [])]
        return reader.get_validation_state(), failures, json.loads(reader.json())


def content_offset(data: bytes, name: str) -> int:
    """A byte of the content itself (pixels, samples, frames), not of any header."""
    if name == "png":
        return data.index(b"IDAT") + 12
    if name == "jpeg":
        return len(data) - 16  # entropy-coded scan data, before the EOI marker
    if name == "webp":
        lossy = data.find(b"VP8 ")  # the image chunk (after VP8X and XMP)
        return (lossy if lossy > 0 else data.index(b"VP8L")) + 24
    if name == "mp4":
        return data.index(b"mdat") + 24
    return data.index(b"data") + 8 + 64  # WAV samples


@pytest.mark.parametrize("name", SIGNED)
def test_every_signed_format_validates_and_one_flipped_byte_fails_it(
    signing: Signing, name: str
) -> None:
    case = CASES[name]
    request_id = f"c2pa-{name}-{uuid.uuid4().hex[:8]}"
    result = call(signing.channel, case.modality, request_id, **case.fields).result
    final, data = result.final, result.data
    assert final is not None
    # held whole and signed, then chunked: the final event covers the signed bytes
    assert final.sha256 == hashlib.sha256(data).hexdigest() and final.total_bytes == len(data)
    assert len(result.chunks) > 1 and all(len(c.data) <= TEST_CHUNK_SIZE for c in result.chunks)
    state, failures, store = validate(data, name, signing.pki)
    assert state == "Trusted" and failures == [], (state, failures)
    manifest = store["manifests"][store["active_manifest"]]
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    created = actions["data"]["actions"][0]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == "genserve" and created["softwareAgent"]["version"]
    assert created["parameters"]["model"] == case.model
    # the generation record is still there, read by the test's own parser and the SDK's
    record = case.parse(data)
    assert record["request_id"] == request_id and record["model"] == case.model
    found = read_provenance(data, signing.pki.ca.decode())
    assert found.record == record
    assert found.c2pa is not None and found.c2pa.state == "Trusted"
    # one flipped byte of content: validation fails
    flipped = bytearray(data)
    flipped[content_offset(data, name)] ^= 0x01
    state, failures, _ = validate(bytes(flipped), name, signing.pki)
    assert state == "Invalid" and failures, (state, failures)
    bad = read_c2pa(bytes(flipped), found.format, signing.pki.ca.decode())
    assert bad is not None and bad.state == "Invalid" and bad.failures


def test_a_mesh_streams_unsigned_with_its_record(signing: Signing) -> None:
    request_id = f"c2pa-obj-{uuid.uuid4().hex[:8]}"
    data = call(signing.channel, "mesh", request_id).result.data
    found = read_provenance(data)
    assert found.format == "obj" and found.record is not None and found.c2pa is None


def test_the_key_is_in_no_log_line(signing: Signing) -> None:
    body = [line for line in signing.pki.key.decode().splitlines() if "-----" not in line]
    logged = signing.logged()
    assert "C2PA signing on" in logged  # the log was captured, the signer loaded
    assert all(line not in logged for line in body)
    assert "PRIVATE KEY" not in logged
    assert signing.pki.key.decode() not in repr(signing.server.server.settings)


def test_genserve_inspect_prints_the_c2pa_state(
    signing: Signing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "signed.png"
    path.write_bytes(call(signing.channel, "image", f"c2pa-inspect-{uuid.uuid4().hex}").result.data)
    anchors = tmp_path / "ca.pem"
    anchors.write_bytes(signing.pki.ca)
    assert cli_main(["--json", "inspect", str(path), "--trust-anchors", str(anchors)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["c2pa"]["state"] == "Trusted" and shown["c2pa"]["failures"] == []
    assert cli_main(["inspect", str(path)]) == 0  # no anchors: signed, valid, not trusted
    assert "C2PA: Valid" in capsys.readouterr().out


def test_settings_name_a_chain_and_one_key(tmp_path: Path) -> None:
    assert not C2paSettings().enabled
    chain = tmp_path / "chain.pem"
    with pytest.raises(ValueError, match="both"):
        C2paSettings(cert_file=chain)
    with pytest.raises(ValueError, match="not both"):
        C2paSettings(cert_file=chain, key_file=tmp_path / "k", key_env="X")
    key = tmp_path / "key.pem"
    key.write_text("  secret  \n")
    assert C2paSettings(cert_file=chain, key_file=key).private_key() == "secret"
    assert "secret" not in repr(C2paSettings(cert_file=chain, key_file=key))


def test_a_streamed_wav_gets_its_real_sizes_before_signing() -> None:
    placeholder = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00" + b"\0" * 16
    wav = placeholder + b"data\xff\xff\xff\xff" + b"\1\2" * 10
    fixed = with_real_riff_sizes(wav)
    assert int.from_bytes(fixed[4:8], "little") == len(wav) - 8
    assert int.from_bytes(fixed[40:44], "little") == 20


def test_overhead_of_signing_a_tiny_image(
    signing: Signing, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Medians over 20 runs each, interleaved in one run: a 64x64 PNG (1 step) from an
    unsigned server and from the signing one (printed for the README)."""
    tiny = load_manifest(manifest_path("tiny"))
    plain = ServerThread(
        make_settings(
            tmp_path_factory.mktemp("plain"), media=MediaLimits(chunk_size=TEST_CHUNK_SIZE)
        ),
        Manifest(image=tiny.image),
    ).start()
    try:
        channel = plain.channel()
        times: dict[str, list[float]] = {"unsigned": [], "signed": []}
        encoding: dict[str, list[float]] = {"unsigned": [], "signed": []}
        sizes: dict[str, int] = {}
        for run in range(21):
            for label, target in (("unsigned", channel), ("signed", signing.channel)):
                started = time.perf_counter()
                result = call(
                    target, "image", f"c2pa-time-{uuid.uuid4().hex}", num_inference_steps=1
                ).result
                if run:  # the first is a warm-up
                    times[label].append((time.perf_counter() - started) * 1000)
                    assert result.final is not None  # encoding_ms: encoder (and signing)
                    encoding[label].append(result.final.timings.encoding_ms)
                sizes[label] = len(result.data)
        channel.close()
    finally:
        plain.stop()
    total = {label: statistics.median(values) for label, values in times.items()}
    encode = {label: statistics.median(values) for label, values in encoding.items()}
    print(
        f"tiny PNG, medians of 20: call unsigned {total['unsigned']:.1f} ms, "
        f"signed {total['signed']:.1f} ms; encoding_ms unsigned {encode['unsigned']:.2f}, "
        f"signed {encode['signed']:.2f} (+{encode['signed'] - encode['unsigned']:.2f} ms); "
        f"bytes {sizes['unsigned']} -> {sizes['signed']} (+{sizes['signed'] - sizes['unsigned']})"
    )
    assert sizes["signed"] > sizes["unsigned"]
