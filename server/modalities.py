"""The server's side of the contract's table (genserve.contract.table): each modality's
limits from the settings, its engine loader for a model, and a model's request defaults.

Nothing here names a modality: a spec and its engine are all a new one needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from genserve.contract import SPECS, Interaction, Modality, ModalitySpec, spec_for
from genserve.server.engine.contract import Engine
from genserve.server.manifest import UPSTREAM_ENGINE, ModelSpec
from genserve.server.settings import Settings

EngineLoader = Callable[[ModelSpec, Settings], Engine[Any, Any]]

__all__ = ["SPECS", "EngineLoader", "Modality", "defaults_for", "limits_of", "loader_for"]


def limits_of(spec: ModalitySpec[Any, Any], settings: Settings) -> Any:
    """What the server enforces for the modality (published to clients by ListModels)."""
    return spec.limits_from(settings.sections())


def engine_kind(modality: Modality, model: ModelSpec) -> str:
    return model.engine or spec_for(modality).default_engine


def loader_for(modality: Modality, model: ModelSpec) -> EngineLoader | None:
    """The engine's loader, imported only now: the table stays cheap to import. A media
    engine made here (not an upstream's, whose files another server made) is stamped: its
    files carry a generation record (genserve.server.provenance)."""
    spec, kind = spec_for(modality), engine_kind(modality, model)
    load = spec.engine_loader(kind)
    if load is None or spec.interaction is not Interaction.MEDIA_STREAM or kind == UPSTREAM_ENGINE:
        return load
    from genserve.server.provenance.engine import stamped

    return stamped(str(modality), kind, load)


def defaults_for(spec: ModalitySpec[Any, Any], model: ModelSpec | None) -> BaseModel:
    """A model's `[<modality>.defaults]`, validated (a bad manifest fails at start)."""
    return spec.defaults_model()(**(model.defaults if model is not None else {}))
