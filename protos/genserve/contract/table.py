"""The table of modalities: the one list every layer loops over."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from genserve.contract.modalities.audio import AUDIO
from genserve.contract.modalities.embedding import EMBEDDING
from genserve.contract.modalities.image import IMAGE
from genserve.contract.modalities.mesh import MESH
from genserve.contract.modalities.text import TEXT
from genserve.contract.modalities.transcription import TRANSCRIPTION
from genserve.contract.modalities.video import VIDEO
from genserve.contract.spec import ModalitySpec

SPECS: tuple[ModalitySpec[Any, Any], ...] = (
    TEXT,
    AUDIO,
    IMAGE,
    VIDEO,
    MESH,
    EMBEDDING,
    TRANSCRIPTION,
)


class Modality(StrEnum):
    """The modality names, as the manifest, the key file and ListModels spell them."""

    TEXT = TEXT.name
    AUDIO = AUDIO.name
    IMAGE = IMAGE.name
    VIDEO = VIDEO.name
    MESH = MESH.name
    EMBEDDING = EMBEDDING.name
    TRANSCRIPTION = TRANSCRIPTION.name


assert [m.value for m in Modality] == [s.name for s in SPECS], "one Modality per spec"

_BY_NAME: dict[str, ModalitySpec[Any, Any]] = {name: spec for spec in SPECS for name in spec.names}


def spec_for(name: str) -> ModalitySpec[Any, Any]:
    """A spec by its name or an alias ("3d" is mesh); KeyError naming the known ones."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(spec.name for spec in SPECS)
        raise KeyError(f"no modality {name!r}; known: {known}") from None
