"""The caller of the running RPC, set by the auth interceptor before the servicer runs."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from genserve.server.admission import Cost
from genserve.server.auth.budget import BudgetBook
from genserve.server.auth.keys import KeyEntry
from genserve.server.manifest import Modality


@dataclass(frozen=True)
class Caller:
    identity: str  # a key id, or `cert:<subject>` for a certificate without a key entry
    key: KeyEntry | None  # its rules; None: no restrictions (an mTLS client of the CA)
    budgets: BudgetBook | None = None

    def allows(self, modality: Modality, model: str | None) -> bool:
        return self.key is None or self.key.allows(modality, model)

    def charge(self, modality: Modality, cost: Cost) -> None:
        if self.key is None or self.budgets is None:
            return
        per_minute = self.key.budget_per_minute.get(modality)
        if per_minute is not None:
            self.budgets.charge(self.key.id, modality.value, cost.units, per_minute)

    def refund(self, modality: Modality, cost: Cost) -> None:
        if self.key is None or self.budgets is None:
            return
        per_minute = self.key.budget_per_minute.get(modality)
        if per_minute is not None:
            self.budgets.refund(self.key.id, modality.value, cost.units, per_minute)


caller_var: ContextVar[Caller | None] = ContextVar("caller", default=None)


def charge_caller(modality: Modality, cost: Cost) -> None:
    """Charges the running call's key for a priced request (no-op without auth)."""
    caller = caller_var.get()
    if caller is not None:
        caller.charge(modality, cost)
