"""Bridge settings from the environment (GENSERVE_BRIDGE_*) and flags; built once in main().

Request bounds are not set here: they are the server's, read from it (see limits.py).
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Timeouts(BaseModel):
    """Per-call gRPC deadlines, seconds."""

    text: float = 300.0
    media: float = 900.0
    embedding: float = 60.0
    health: float = 2.0  # also ListModels
    models: float = 900.0  # LoadModel (a cold load) and UnloadModel (drains in-flight requests)
    limits: float = Field(30.0, description="at start, waiting for the server's limits")


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
    timeouts: Timeouts = Field(default_factory=Timeouts)
