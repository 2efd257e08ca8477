"""Admission by cost: refuse, before it starts, work a model cannot finish in time.

Each modality prices a request in the units that cost its model compute (the table of
modalities says how: width x height x steps for images, and so on). Per model, the
manifest caps the units (`[<modality>.limits] max_cost`, and `max_pixels` for images
and video) and the wall time (`max_request_s`). The server learns each model's speed in
units per second from the requests it completes; with a speed known, a request whose
estimated time exceeds the caller's deadline or `max_request_s` is refused, saying the
estimate and the limit. A single denoising step cannot be interrupted, so refusing is
the only way to keep a too-large request from holding a pipeline. Text is priced and
capped but not timed: it stops within one decoding step when its deadline passes, its
stream is useful cut short, and max_new_tokens is a bound, not an estimate (most answers
end earlier).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.spec import Cost
from genserve.server.errors import FailedPrecondition, InvalidArgument

# Weight of the newest observation in the running speed estimate.
SPEED_SMOOTHING = 0.3


class AdmissionLimits(BaseModel):
    """A model's own limits, from its manifest entry (`[<modality>.limits]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cost: float | None = Field(None, gt=0, description="units (see the modality's cost)")
    max_pixels: int | None = Field(None, gt=0, description="width x height, images and video")
    max_request_s: float | None = Field(None, gt=0, description="estimated wall time")


class SpeedEstimate:
    """Units per second, learned from completed requests (a running average). Read and
    written on the event loop only."""

    def __init__(self) -> None:
        self._units_per_s: float | None = None

    @property
    def units_per_s(self) -> float | None:
        return self._units_per_s

    def observe(self, units: float, seconds: float) -> None:
        if units <= 0 or seconds <= 0:
            return
        speed = units / seconds
        previous = self._units_per_s
        self._units_per_s = (
            speed if previous is None else previous + SPEED_SMOOTHING * (speed - previous)
        )

    def seconds_for(self, units: float) -> float | None:
        speed = self._units_per_s
        return units / speed if speed else None


def admit(
    model: str,
    cost: Cost,
    limits: AdmissionLimits,
    speed: SpeedEstimate,
    time_remaining_s: float | None,
) -> None:
    """Raises InvalidArgument past the model's caps, FailedPrecondition when the estimate
    exceeds the time the request has."""
    pixels, max_pixels = cost.pixels, limits.max_pixels
    if pixels is not None and max_pixels is not None and pixels > max_pixels:
        raise InvalidArgument(
            "width",
            f"width x height = {pixels} pixels exceeds model {model}'s limit of {max_pixels}",
        )
    if limits.max_cost is not None and cost.units > limits.max_cost:
        raise InvalidArgument(
            "cost",
            f"{cost.formula} = {cost.units:.0f} exceeds model {model}'s limit of "
            f"{limits.max_cost:.0f}",
        )
    estimate = speed.seconds_for(cost.units) if cost.timed else None
    if estimate is None:
        return  # untimed, or not measured yet: the caps above are all there is
    budgets = [("the request's deadline", time_remaining_s)]
    budgets.append((f"model {model}'s max_request_s", limits.max_request_s))
    for name, budget in budgets:
        if budget is not None and estimate > budget:
            raise FailedPrecondition(
                f"estimated {estimate:.1f} s ({cost.formula} = {cost.units:.0f} at "
                f"{speed.units_per_s:.0f}/s) exceeds {name} of {budget:.1f} s"
            )
