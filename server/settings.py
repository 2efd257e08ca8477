"""Typed settings from the environment (GENSERVE_*) and command-line flags.

Built once in main() and passed down; nothing here is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from genserve.contract import SPECS
from genserve.contract.limits import (
    AudioLimits,
    EmbeddingLimits,
    ImageLimits,
    MediaLimits,
    MeshLimits,
    TextLimits,
    VideoLimits,
)
from genserve.server.jobs.settings import JobSettings
from genserve.server.logging_setup import LogFormat
from genserve.server.provenance.c2pa_sign import C2paSettings
from genserve.server.ray_serve.placement import RaySettings
from genserve.server.worker.config import WorkerSettings


class TlsSettings(BaseModel):
    """TLS for the gRPC port: a certificate and key; a client CA turns on mTLS."""

    cert_file: Path | None = Field(None, description="PEM server certificate (chain)")
    key_file: Path | None = Field(None, description="PEM private key of the certificate")
    client_ca_file: Path | None = Field(
        None, description="PEM CA of client certificates: required, and their subject is the caller"
    )


class AuthSettings(BaseModel):
    """Failed-attempt throttling per peer, keys-file watching, what stays open."""

    max_failures: int = Field(10, ge=1, description="bad keys per peer within the window")
    failure_window_s: float = Field(60.0, gt=0)
    lockout_s: float = Field(60.0, gt=0, description="then every call of that peer is refused")
    watch_s: float = Field(2.0, ge=0, description="keys file checked for changes (0: SIGHUP only)")
    open_reflection: bool = Field(False, description="reflection without a key (auth on)")


class DeclaredSettings(BaseSettings):
    """The settings; each modality's limits section that is not declared here is added
    from its spec (below), so a new modality's limits are settings with no edit here."""

    model_config = SettingsConfigDict(
        env_prefix="GENSERVE_",
        env_nested_delimiter="__",
        cli_kebab_case=True,
        cli_prog_name="python -m genserve.server",
        cli_implicit_flags=True,
    )

    host: str | None = Field(
        None, description="address the gRPC server binds; default: all with auth, else loopback"
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    profile: str = Field("tiny", description="model manifest: tiny (offline) or seed")
    manifest: Path | None = Field(None, description="a manifest TOML file; overrides --profile")
    data_dir: Path = Field(Path("var"), description="usage log and other runtime data")
    model_store: Path = Field(Path("var/models"), description="built offline pipelines")
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    shutdown_grace_s: float = Field(10.0, ge=0, description="time in-flight streams get to drain")
    metrics_port: int | None = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port; unset to disable"
    )
    reflection: bool = True
    memory_budget_mb: int = Field(
        0, ge=0, description="models' memory; past it, idle lazy models are evicted (0: none)"
    )
    max_receive_message_mb: int = Field(32, ge=1, description="largest request (video images)")
    text: TextLimits = Field(default_factory=TextLimits)
    media: MediaLimits = Field(default_factory=MediaLimits)
    image: ImageLimits = Field(default_factory=ImageLimits)
    audio: AudioLimits = Field(default_factory=AudioLimits)
    video: VideoLimits = Field(default_factory=VideoLimits)
    mesh: MeshLimits = Field(default_factory=MeshLimits)
    embedding: EmbeddingLimits = Field(default_factory=EmbeddingLimits)
    keys_file: Path | None = Field(None, description="API keys (genserve keys create); auth on")
    insecure_no_auth: bool = Field(False, description="allow a non-loopback host without auth")
    metrics_host: str = Field("127.0.0.1", description="address the metrics port binds")
    log_prompts: bool = Field(False, description="debug: log request bodies (prompts!)")
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    c2pa: C2paSettings = Field(default_factory=C2paSettings)

    def sections(self) -> dict[str, BaseModel]:
        """The limits sections by name, as the modality specs read them."""
        return {name: value for name, value in self if isinstance(value, BaseModel)}

    @property
    def usage_db_path(self) -> Path:
        return self.data_dir / "usage.sqlite3"


def _with_every_modality(declared: type[DeclaredSettings]) -> type[DeclaredSettings]:
    sections: dict[str, Any] = {
        spec.name: (spec.limits_type, Field(default_factory=spec.limits_type))
        for spec in SPECS
        if spec.name not in declared.model_fields
    }
    return create_model("Settings", __base__=declared, **sections)


if TYPE_CHECKING:
    Settings = DeclaredSettings
else:
    Settings = _with_every_modality(DeclaredSettings)
