"""The auth parts on their own, with a clock the test moves: a lockout ends, failures
outside the window are forgotten, a budget refills at budget/60 per second."""

from __future__ import annotations

import pytest

from genserve.server.auth.budget import BudgetBook
from genserve.server.auth.exposure import ExposureError, bind_host, is_loopback
from genserve.server.auth.guard import bearer_token
from genserve.server.auth.hashing import hash_secret, key_id_of, new_secret, verify_secret
from genserve.server.auth.throttle import FailureThrottle, peer_address
from genserve.server.errors import InvalidArgument, ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lockout_ends_and_old_failures_are_forgotten() -> None:
    clock = Clock()
    throttle = FailureThrottle(max_failures=3, window_s=60, lockout_s=30, clock=clock)
    for _ in range(2):
        throttle.failed("10.0.0.1")
    clock.now += 61  # those two are out of the window now
    throttle.failed("10.0.0.1")
    assert throttle.blocked_for("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.blocked_for("10.0.0.1") == pytest.approx(30)
    assert throttle.blocked_for("10.0.0.2") is None  # per address
    clock.now += 31
    assert throttle.blocked_for("10.0.0.1") is None


def test_peer_addresses_drop_the_port() -> None:
    assert peer_address("ipv4:10.1.2.3:5555") == "10.1.2.3"
    assert peer_address("ipv6:[::1]:5555") == "::1"
    assert peer_address("unix:/tmp/socket") == "unix:/tmp/socket"


def test_a_budget_refills_at_its_rate() -> None:
    clock = Clock()
    book = BudgetBook(clock)
    book.charge("k", "image", 50, per_minute=60)
    with pytest.raises(ResourceExhausted) as refused:
        book.charge("k", "image", 20, per_minute=60)
    assert refused.value.retry_after_s == pytest.approx(10)  # 10 units short, 1 unit/s
    clock.now += 10
    book.charge("k", "image", 20, per_minute=60)
    book.charge("other", "image", 60, per_minute=60)  # per key
    with pytest.raises(InvalidArgument, match="budget"):
        book.charge("k", "image", 61, per_minute=60)  # could never fit


def test_secrets_hash_and_verify() -> None:
    secret = new_secret("svc")
    assert key_id_of(secret) == "svc"
    stored = hash_secret(secret)
    assert secret not in stored and stored != hash_secret(secret)  # salted
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret(secret, "garbage")
    assert key_id_of("definitely-wrong-key") is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer abc ", "abc"), ("Bearer ", None), ("Basic abc", None)],
)
def test_bearer_tokens(header: str, token: str | None) -> None:
    assert bearer_token(header) == token


def test_bind_addresses() -> None:
    assert bind_host(None, auth_on=False, insecure_no_auth=False, what="t") == "127.0.0.1"
    assert bind_host(None, auth_on=True, insecure_no_auth=False, what="t") == "0.0.0.0"
    assert bind_host("::1", auth_on=False, insecure_no_auth=False, what="t") == "::1"
    with pytest.raises(ExposureError):
        bind_host("10.0.0.5", auth_on=False, insecure_no_auth=False, what="t")
    assert bind_host("10.0.0.5", auth_on=False, insecure_no_auth=True, what="t") == "10.0.0.5"
    assert is_loopback("localhost") and is_loopback("[::1]") and not is_loopback("0.0.0.0")
