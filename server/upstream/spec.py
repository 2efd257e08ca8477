"""A model served elsewhere: where it is, how we authenticate to it, how long we wait.

Written in the manifest as the model's `upstream` table (`engine = "upstream"`). The API
key is never inline: the manifest names an environment variable or a file, read once
when the model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class UpstreamTimeouts(BaseModel):
    """Each one is further capped by the caller's own gRPC deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_s: float = Field(5.0, gt=0, description="to open a connection")
    first_byte_s: float = Field(60.0, gt=0, description="from sending to the first body byte")
    idle_s: float = Field(30.0, gt=0, description="longest gap between bytes once streaming")


class UpstreamRetries(BaseModel):
    """Retries happen only before the first byte, with full jitter, and honour the
    upstream's Retry-After; never past the caller's deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(3, ge=1, le=10, description="tries in all, the first included")
    backoff_s: float = Field(0.25, gt=0, description="base of the exponential backoff")
    max_wait_s: float = Field(10.0, gt=0, description="a longer Retry-After is not waited out")


class UpstreamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "bentoml"]
    base_url: str = Field(description="openai: up to /v1 (e.g. http://host:8080/v1); bentoml: root")
    model: str | None = Field(None, description="openai: the upstream's name for the model")
    endpoint: str | None = Field(None, description="bentoml: the API's path, e.g. /txt2img")
    voice: str | None = Field(None, description="openai speech: the upstream voice to ask for")
    send_top_k: bool = Field(
        False, description="openai chat: send top_k (llama-server, vLLM; OpenAI refuses it)"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    api_key_file: Path | None = Field(None, description="file holding the key")
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    retries: UpstreamRetries = Field(default_factory=UpstreamRetries)
    health_interval_s: float = Field(5.0, gt=0, description="how often reachability is probed")
    max_in_flight: int = Field(64, ge=1, description="calls open at once before 429")
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="openai chat: the largest one streamed event may be"
    )

    @model_validator(mode="after")
    def _what_each_kind_needs(self) -> UpstreamSpec:
        if self.kind == "openai" and not self.model:
            raise ValueError("an openai upstream needs `model` (the upstream's model name)")
        if self.kind == "bentoml" and not self.endpoint:
            raise ValueError("a bentoml upstream needs `endpoint` (e.g. /txt2img)")
        if self.api_key_env and self.api_key_file:
            raise ValueError("name the key's environment variable or its file, not both")
        return self

    def api_key(self) -> str | None:
        """Read when the model loads (never at import, never logged)."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(f"environment variable {self.api_key_env} is not set")
            return value
        if self.api_key_file:
            key = self.api_key_file.read_text().strip()
            if not key:
                raise ValueError(f"key file {self.api_key_file} is empty")
            return key
        return None
