"""Rate limits shared through Redis: the same answers as the in-memory limiter, and exact
across two servers (a fleet's ingresses) under 50 concurrent clients."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.harness import AppStack
from tokenmill.protocol.errors import ServiceUnavailable
from tokenmill.tenancy.limits import Limits, RateLimiter
from tokenmill.tenancy.redis_limits import RedisRateLimiter

SIX = {
    f"x-ratelimit-{what}-{unit}"
    for what in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
}


def limiter(url: str) -> RedisRateLimiter:
    return RedisRateLimiter(url, prefix=f"test:{uuid.uuid4().hex}")


def test_requests_per_minute_as_in_memory(redis_url: str) -> None:
    shared, local = limiter(redis_url), RateLimiter()
    limits = Limits(rpm=3, tpm=None)
    for lim in (shared, local):
        got = [lim.admit(("k", "m"), limits, 10).admitted for _ in range(4)]
        assert got == [True, True, True, False]
    refused = shared.admit(("k", "m"), limits, 10)
    assert refused.limited_by == "requests"
    assert refused.retry_after is not None and 59 < refused.retry_after <= 60
    snap = shared.peek(("k", "m"), limits)
    assert snap is not None and snap.requests_used == 3
    assert set(snap.headers()) == {
        f"x-ratelimit-{w}-requests" for w in ("limit", "remaining", "reset")
    }
    # Windows are per key and model.
    assert shared.admit(("k", "other"), limits, 10).admitted
    assert shared.admit(("k2", "m"), limits, 10).admitted


def test_tokens_reserved_then_settled(redis_url: str) -> None:
    lim = limiter(redis_url)
    limits = Limits(rpm=None, tpm=100)
    first = lim.admit(("k", "m"), limits, 80)  # prompt + max_tokens reserved
    assert first.admitted and first.snapshot is not None and first.snapshot.tokens_used == 80
    second = lim.admit(("k", "m"), limits, 30)
    assert not second.admitted and second.limited_by == "tokens"
    assert second.retry_after is not None and second.retry_after > 59
    lim.settle(first.reservation, 20)  # the request used fewer
    third = lim.admit(("k", "m"), limits, 30)
    assert third.admitted and third.snapshot is not None and third.snapshot.tokens_used == 50
    too_big = lim.admit(("k", "m"), limits, 101)
    assert not too_big.admitted and too_big.retry_after is None  # waiting cannot help


def test_uncounted_and_unenforced_tiers(redis_url: str) -> None:
    lim = limiter(redis_url)
    limits = Limits(rpm=1, tpm=None)
    assert lim.admit(("k", "m"), limits, 1, count=False).admitted  # no-limit: not counted
    assert lim.admit(("k", "m"), limits, 1).admitted
    over = lim.admit(("k", "m"), limits, 1, enforce=False)  # over-limit: counted anyway
    assert over.admitted and over.snapshot is not None and over.snapshot.requests_used == 2


def test_an_unreachable_redis_is_a_503() -> None:
    lim = RedisRateLimiter("redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailable):
        lim.admit(("k", "m"), Limits(rpm=1), 1)


def test_two_servers_share_one_exact_window(redis_url: str, tmp_path: Path) -> None:
    # Two ingresses: their own apps and limiters, one database and one Redis.
    prefix = f"test:{uuid.uuid4().hex}"
    stacks = [
        AppStack(tmp_path, limiter=RedisRateLimiter(redis_url, prefix=prefix)) for _ in range(2)
    ]
    stacks[0].keys.create_project("acme")
    key, _ = stacks[0].keys.create_key(["acme"], rpm=20, tpm=100_000)
    for s in stacks:
        s.open()
    try:
        clients = [s.official(key) for s in stacks]

        def one(i: int) -> tuple[int, dict[str, str]]:
            try:
                r = clients[i % 2].completions.with_raw_response.create(
                    model="fake", prompt="abc", max_tokens=2
                )
                return 200, dict(r.headers)
            except openai.RateLimitError as e:
                return 429, dict(e.response.headers)

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(50)))
        ok = [h for status, h in results if status == 200]
        refused = [h for status, h in results if status == 429]
        assert len(ok) == 20 and len(refused) == 30  # exactly the limit, across both
        assert all(set(h) >= SIX for h in ok + refused)
        assert all("retry-after" in h for h in refused)
        remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for h in ok)
        assert remaining == list(range(20))  # each admission saw every earlier one
    finally:
        for s in stacks:
            s.close()
