"""Bridge settings from the environment (GENSERVE_BRIDGE_*) and flags; built once in main()."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PublicLimits(BaseModel):
    """Bounds the bridge enforces and publishes in its OpenAPI document. They match the
    server's defaults; the server checks again, so a tighter server still wins."""

    max_prompt_chars: int = 32768  # text; leaves room for the system prompt under 65536
    max_media_prompt_chars: int = 2000
    max_messages: int = 256
    max_new_tokens: int = 2048
    max_image_steps: int = 100
    max_image_guidance: float = 30.0
    max_side: int = 1024  # 1024 x 1024 is the server's pixel limit for images and video
    max_video_frames: int = 64
    max_mesh_steps: int = 100
    max_mesh_guidance: float = 50.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_embedding_texts: int = 64
    max_embedding_chars: int = 8192


class Timeouts(BaseModel):
    """Per-call gRPC deadlines, seconds."""

    text: float = 300.0
    media: float = 900.0
    embedding: float = 60.0
    health: float = 2.0


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GENSERVE_BRIDGE_",
        env_nested_delimiter="__",
        cli_kebab_case=True,
        cli_prog_name="python -m genserve.bridge",
    )

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    grpc_target: str = Field("localhost:50051", description="the genserve gRPC server")
    log_level: str = "INFO"
    log_format: str = Field("text", pattern="^(text|json)$")
    limits: PublicLimits = Field(default_factory=PublicLimits)
    timeouts: Timeouts = Field(default_factory=Timeouts)
