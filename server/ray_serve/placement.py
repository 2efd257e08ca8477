"""Where a model's engine runs, as the manifest and the edge's settings say it.

`placement = "process"` runs a model's engine in a worker process of its own
(server/worker/); `placement = "ray"` puts it in a Ray Serve deployment;
its `[<modality>.ray]` table says how many replicas and what each one gets. The edge's
`--ray.*` settings say which cluster. Nothing here imports ray: a server with no
ray-placed model never pays for it.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

# local: in the server's process (the default); process: a worker process of its own;
# ray: a Ray Serve deployment.
Placement = Literal["local", "process", "ray"]


class RayAutoscaling(BaseModel):
    """Ray Serve's autoscaling: replicas follow the requests each one has in flight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At least one: with none running the model is not ready, so no request would ever
    # reach the handle and make Serve scale up again.
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)


class RayPlacement(BaseModel):
    """One model's deployment: its replicas and the resources of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(1, ge=1, description="fixed replica count (no autoscaling)")
    autoscaling: RayAutoscaling | None = Field(None, description="instead of num_replicas")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share one)")
    max_ongoing_requests: int = Field(
        8, ge=1, description="requests a replica holds at once; its engine queues them"
    )
    health_check_period_s: float = Field(2.0, gt=0)
    max_constructor_retries: int = Field(
        3, ge=1, description="failed replica starts before Serve gives the deployment up"
    )
    app: str | None = Field(None, description="Serve application name; default genserve-<name>")

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> RayPlacement:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("give num_replicas or an [autoscaling] table, not both")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `serve.deployment(...).options(...)`."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
            "max_constructor_retry_count": self.max_constructor_retries,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


class RaySettings(BaseModel):
    """How the edge reaches Ray (`--ray.address` and friends)."""

    address: str | None = Field(
        None,
        description="Ray cluster: host:port or auto; unset: a local one, or one started here",
    )
    namespace: str = Field("genserve", description="Ray namespace of genserve's own actors")
    deploy: bool = Field(
        True, description="run each ray-placed model's Serve app; off: use apps already running"
    )
    deploy_timeout_s: float = Field(
        300.0, gt=0, description="for a deployment's replicas to run; past it the model failed"
    )
    poll_s: float = Field(0.5, gt=0, description="how often replica health and stats are read")
    request_timeout_s: float = Field(
        600.0, gt=0, description="a replica ends a request running longer (a lost cancel)"
    )


@runtime_checkable
class Replicated(Protocol):
    """An engine whose work runs on replicas elsewhere (ListModels reports them)."""

    @property
    def replicas_running(self) -> int: ...


def app_name(model: str, placement: RayPlacement) -> str:
    return placement.app or f"genserve-{model}"
