"""Typed settings from the environment (GENSERVE_*) and command-line flags.

Built once in main() and passed down; nothing here is read at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from genserve.server.logging_setup import LogFormat
from genserve.server.ray_serve.placement import RaySettings


class TextLimits(BaseModel):
    """Bounds on text requests; a request outside them gets INVALID_ARGUMENT."""

    max_new_tokens: int = Field(2048, ge=1, description="largest max_new_tokens a caller may ask")
    max_prompt_chars: int = Field(65536, ge=1, description="prompt plus messages, in characters")
    max_messages: int = Field(256, ge=1)
    max_stop_sequences: int = Field(4, ge=0)
    max_stop_sequence_chars: int = Field(64, ge=1)
    max_top_k: int = Field(1000, ge=1)
    max_temperature: float = Field(10.0, gt=0)
    max_queue: int = Field(64, ge=1, description="requests waiting for the model before 429")
    max_batch_size: int = Field(16, ge=1, description="sequences decoded together")
    max_wait_ms: float = Field(10.0, ge=0, description="how long a batch waits for company")
    max_batch_tokens: int = Field(32768, ge=1, description="prompt + new tokens per batch")
    prefill_chunk_tokens: int = Field(
        256, ge=1, description="prompt tokens prefilled per scheduler step, between decode steps"
    )
    kv_cache_tokens: int = Field(
        16384, ge=256, description="llama.cpp engine: KV cells its running requests share"
    )
    threads: int = Field(0, ge=0, description="llama.cpp engine: threads; 0 = every usable core")


class MediaLimits(BaseModel):
    """What every media modality shares."""

    chunk_size: int = Field(64 * 1024, ge=1024, le=2 * 1024 * 1024, description="bytes per chunk")
    max_queue: int = Field(16, ge=1, description="requests waiting per pipeline before 429")
    max_prompt_chars: int = Field(2000, ge=1)


class ImageLimits(BaseModel):
    max_steps: int = Field(100, ge=1)
    max_guidance_scale: float = Field(30.0, gt=0)
    min_side: int = Field(64, ge=8)
    max_side: int = Field(2048, ge=8)
    max_pixels: int = Field(1024 * 1024, ge=64)


class AudioLimits(BaseModel):
    max_prompt_chars: int = Field(500, ge=1)
    voice_presets: tuple[str, ...] = tuple(f"v2/en_speaker_{i}" for i in range(10))


class VideoLimits(BaseModel):
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="decompression-bomb guard")
    max_frames: int = Field(64, ge=1)
    max_fps: float = Field(60.0, gt=0)
    max_steps: int = Field(100, ge=1)
    min_side: int = Field(64, ge=8)
    max_side: int = Field(2048, ge=8)
    max_pixels: int = Field(1024 * 1024, ge=64)


class MeshLimits(BaseModel):
    max_steps: int = Field(100, ge=1)
    max_guidance_scale: float = Field(50.0, gt=0)


class EmbeddingLimits(BaseModel):
    max_texts: int = Field(64, ge=1)
    max_text_chars: int = Field(8192, ge=1)
    max_queue: int = Field(64, ge=1, description="batches waiting for the model before 429")


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


class Settings(BaseSettings):
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

    @property
    def usage_db_path(self) -> Path:
        return self.data_dir / "usage.sqlite3"
