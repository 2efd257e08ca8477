"""A ray-placed model's Serve application, built in one place for both ways it is deployed:
by the edge (`serve.run`), or by a Serve config file (`serve deploy`, KubeRay's RayService),
whose `import_path: genserve.server.ray_serve.apps:build` calls `build(args)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from genserve.server.manifest import Manifest, Modality, ModelSpec, load_manifest, manifest_path
from genserve.server.ray_serve.replica import EngineReplica
from genserve.server.settings import Settings

DEPLOYMENT = "engine"  # the one deployment of each model's application


def application(modality: Modality, spec: ModelSpec, settings: Settings) -> Application:
    """The model's engine in replicas as its manifest entry says; replicas build it in
    process (placement local) with the settings they are given."""
    local = spec.model_copy(update={"placement": "local"})
    deployment = EngineReplica.options(  # type: ignore[attr-defined]
        name=DEPLOYMENT, **spec.ray.deployment_options()
    )
    app: Application = deployment.bind(modality, local, settings)
    return app


def find(manifest: Manifest, name: str) -> tuple[Modality, ModelSpec]:
    for modality in Modality:
        for spec in manifest.specs(modality):
            if spec.name == name:
                return modality, spec
    raise ValueError(f"no model named {name!r} in the manifest")


def build(args: dict[str, Any]) -> Application:
    """Serve's application builder. args: `model` (its name), and `manifest` (a TOML path)
    or `profile` (default tiny). Settings come from GENSERVE_* variables, as the edge's."""
    settings = Settings()
    settings = settings.model_copy(update={"model_store": settings.model_store.resolve()})
    override = Path(args["manifest"]) if "manifest" in args else None
    manifest = load_manifest(manifest_path(args.get("profile", "tiny"), override))
    modality, spec = find(manifest, args["model"])
    return application(modality, spec, settings)
