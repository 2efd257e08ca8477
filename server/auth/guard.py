"""Who is calling, and may they: the checks the auth interceptor runs before any work.

Order: a locked-out peer is refused first (no hashing for it); then the bearer key, or
under mTLS the client certificate's subject; then whether that caller may use the
model the request names (or its modality's default). Budgets are charged later, where
a request is priced (servicers/request.py admit_request), through the caller set here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import text_format

from genserve.contract import metadata
from genserve.server.auth.budget import BudgetBook
from genserve.server.auth.caller import Caller
from genserve.server.auth.store import KeyStore
from genserve.server.auth.throttle import FailureThrottle, peer_address
from genserve.server.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from genserve.server.manifest import Modality
from genserve.server.request_context import current_call_details, current_request_id

logger = logging.getLogger(__name__)

AUTHORIZATION = metadata.AUTHORIZATION
BEARER = "bearer "
ModelOf = Callable[[Modality, str | None], str | None]  # (modality, requested) -> model name
ModalityOf = Callable[[str], Modality | None]  # a model name -> its modality


def bearer_token(value: str | None) -> str | None:
    """The key of `Bearer <key>` (scheme case-insensitive), None when absent or empty."""
    if value is None or value[: len(BEARER)].lower() != BEARER:
        return None
    token = value[len(BEARER) :].strip()
    return token or None


def certificate_subject(auth_context: dict[str, Sequence[bytes]]) -> str | None:
    """The verified client certificate's subject (gRPC's `x509_subject`), under mTLS."""
    values = auth_context.get("x509_subject") or ()
    return values[0].decode() if values else None


class Guard:
    def __init__(
        self,
        store: KeyStore | None,
        mtls: bool,
        throttle: FailureThrottle,
        budgets: BudgetBook,
        model_of: ModelOf,
        modality_of: ModalityOf,
    ) -> None:
        self.store = store
        self._mtls = mtls
        self._throttle = throttle
        self._budgets = budgets
        self._model_of = model_of
        self._modality_of = modality_of

    @property
    def enabled(self) -> bool:
        return self.store is not None or self._mtls

    async def identify(
        self, peer: str, authorization: str | None, auth_context: dict[str, Sequence[bytes]]
    ) -> Caller:
        """The caller, or Unauthenticated; ResourceExhausted for a locked-out peer."""
        address = peer_address(peer)
        wait = self._throttle.blocked_for(address)
        if wait is not None:
            raise ResourceExhausted(
                f"too many failed attempts from this address: retry in {math.ceil(wait)} s; "
                f"request_id={current_request_id()}",
                retry_after_s=wait,
            )
        # Without a keys file (mTLS alone) there is no key to check: the certificate decides.
        token = bearer_token(authorization) if self.store is not None else None
        if token is not None and self.store is not None:
            entry = await self.store.authenticate(token)
            if entry is None:
                self._throttle.failed(address)
                logger.warning("invalid API key from %s", address)
                raise Unauthenticated(f"invalid API key; request_id={current_request_id()}")
            return Caller(entry.id, entry, self._budgets)
        subject = certificate_subject(auth_context) if self._mtls else None
        if subject is not None:
            entry = self.store.by_subject(subject) if self.store is not None else None
            if entry is not None:
                return Caller(entry.id, entry, self._budgets)
            return Caller(f"cert:{subject}", None)
        raise Unauthenticated(
            f"missing API key: send 'authorization: Bearer <key>'; "
            f"request_id={current_request_id()}"
        )

    def authorize(self, caller: Caller, modality: Modality | None, requested: str | None) -> None:
        """PermissionDenied unless the caller may use that model. `modality` None with a
        name: a model named by ModelService (its modality looked up)."""
        if modality is None:
            if requested is None:
                return
            modality = self._modality_of(requested)
            if modality is None:
                return  # no such model: the servicer answers NOT_FOUND
            model: str | None = requested
        else:
            model = self._model_of(modality, requested)
        if not caller.allows(modality, model):
            raise PermissionDenied(
                f"key {caller.identity} may not call {modality.value} model "
                f"{model or '(default)'}; request_id={current_request_id()}"
            )

    def record(self, caller: Caller) -> None:
        """The caller's id (never its secret) for the access log, usage log and metrics."""
        current_call_details().key_id = caller.identity


def describe(request: Any) -> str:
    """A request as text, for the debug flag that logs prompts (--log-prompts)."""
    return text_format.MessageToString(request, as_one_line=True)[:2000]
