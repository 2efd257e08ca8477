"""Bridge settings from the environment (GENSERVE_BRIDGE_*) and flags; built once in main().

Request bounds are not set here: they are the server's, read from it (see limits.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from genserve.contract import Interaction, ModalitySpec
from genserve.server.settings import AuthSettings


class Timeouts(BaseModel):
    """Per-call gRPC deadlines, seconds. A modality's call takes its spec's SDK timeout
    (`sdk_timeout_s`: the same deadline as through the SDK) unless its kind of call is set
    here, so a new modality needs none of its own."""

    text: float | None = Field(None, gt=0, description="text streams: chat, transcription")
    media: float | None = Field(None, gt=0, description="media streams: image, audio, video, 3D")
    embedding: float | None = Field(None, gt=0, description="unary calls: embeddings")
    health: float = 2.0  # also ListModels
    models: float = 900.0  # LoadModel (a cold load) and UnloadModel (drains in-flight requests)
    limits: float = Field(30.0, description="at start, waiting for the server's limits")

    def for_spec(self, spec: ModalitySpec[Any, Any]) -> float:
        by_kind = {
            Interaction.TEXT_STREAM: self.text,
            Interaction.MEDIA_STREAM: self.media,
            Interaction.UNARY: self.embedding,
        }[spec.interaction]
        return by_kind if by_kind is not None else spec.sdk_timeout_s


class GrpcTls(BaseModel):
    """How the bridge reaches a gRPC server that serves TLS (and maybe asks for mTLS)."""

    enabled: bool = Field(False, description="TLS to the gRPC server (implied by the files)")
    root_certificates: Path | None = Field(None, description="PEM CA that signed the server")
    client_cert_file: Path | None = Field(None, description="the bridge's certificate (mTLS)")
    client_key_file: Path | None = None

    @property
    def on(self) -> bool:
        return self.enabled or self.root_certificates is not None


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GENSERVE_BRIDGE_",
        env_nested_delimiter="__",
        cli_kebab_case=True,
        cli_prog_name="python -m genserve.bridge",
        cli_implicit_flags=True,
    )

    host: str | None = Field(
        None, description="address to bind; default: all with a keys file, else loopback"
    )
    port: int = Field(8000, ge=0, le=65535)
    grpc_target: str = Field("localhost:50051", description="the genserve gRPC server")
    log_level: str = "INFO"
    log_format: str = Field("text", pattern="^(text|json)$")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    keys_file: Path | None = Field(None, description="the server's API keys file: auth on")
    insecure_no_auth: bool = Field(False, description="allow a non-loopback host without auth")
    api_key: str | None = Field(
        None, description="the bridge's own key, for its own calls (limits at start, /readyz)"
    )
    ssl_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS")
    ssl_keyfile: Path | None = None
    grpc_tls: GrpcTls = Field(default_factory=GrpcTls)
    auth: AuthSettings = Field(default_factory=AuthSettings)
