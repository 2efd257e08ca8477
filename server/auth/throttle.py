"""Failed-attempt throttling per peer address: after `max_failures` bad or missing keys
within `window_s`, the peer is refused outright (RESOURCE_EXHAUSTED / HTTP 429, with the
wait) for `lockout_s`, a right key included, so guessing cannot go on meanwhile."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

# Peers remembered at most: the oldest are forgotten first, so a flood of addresses
# cannot grow the table without bound.
MAX_PEERS = 10_000


class FailureThrottle:
    def __init__(
        self,
        max_failures: int,
        window_s: float,
        lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._lockout_s = lockout_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def blocked_for(self, peer: str) -> float | None:
        """Seconds the peer must still wait, or None when it may try."""
        until = self._locked_until.get(peer)
        if until is None:
            return None
        remaining = until - self._clock()
        if remaining > 0:
            return remaining
        del self._locked_until[peer]
        return None

    def failed(self, peer: str) -> None:
        now = self._clock()
        attempts = self._failures.pop(peer, None) or deque()
        attempts.append(now)
        while attempts and attempts[0] <= now - self._window_s:
            attempts.popleft()
        if len(attempts) >= self._max_failures:
            self._locked_until[peer] = now + self._lockout_s
            attempts.clear()
        else:
            self._failures[peer] = attempts  # most recent last
        while len(self._failures) > MAX_PEERS:
            self._failures.popitem(last=False)
        if len(self._locked_until) > MAX_PEERS:
            self._locked_until = {p: t for p, t in self._locked_until.items() if t > now}


def peer_address(peer: str) -> str:
    """The address without the port: gRPC's `ipv4:10.0.0.1:5432`, `ipv6:[::1]:5432`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
