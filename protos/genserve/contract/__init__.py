"""The contract every layer shares: one spec per modality, importable without torch.

A spec (see spec.py) says what a modality is: its names, its proto service and types, how
it streams, its parameters with their bounds (from its limits) and defaults, how a request
is priced, its MIME types, HTTP path and SDK timeout, and its engine kinds as import paths.
The server, the bridge, the SDK, the CLI, the UI, the key file and Ray are built from the
table (table.py); adding a modality is a proto, a spec module, a table line and an engine.
"""

from genserve.contract import metadata
from genserve.contract.spec import (
    Cost,
    Interaction,
    InvalidField,
    ModalitySpec,
)
from genserve.contract.table import (
    SPECS,
    Modality,
    spec_for,
)

__all__ = [
    "SPECS",
    "Cost",
    "Interaction",
    "InvalidField",
    "Modality",
    "ModalitySpec",
    "metadata",
    "spec_for",
]
