"""Rate limits, tiers and the engine queue on a real server, through the official client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.helpers import NO_EOS
from tests.e2e.tenancy_helpers import MODEL, aclient, client, new_db, new_key

ADMIN = "tm-static-admin-key"
PROMPT = [1000 + i for i in range(10)]  # token ids: exactly 10 prompt tokens
RATE_HEADERS = ("limit", "remaining", "reset")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_db(tmp_path_factory.mktemp("limits"), "acme")


@pytest.fixture(scope="module")
def server(db: str) -> Iterator[Server]:
    s = start_server("--api-key", ADMIN, "--db", db, "--max-num-seqs", "8", "--threads", "1")
    yield s
    stop_server(s)


async def complete(c: openai.AsyncOpenAI, max_tokens: int = 4, **kw: Any) -> Any:
    """The raw response (headers and parsed body), or the API error raised."""
    try:
        return await c.completions.with_raw_response.create(
            model=MODEL, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
            logit_bias=NO_EOS, **kw,
        )  # fmt: skip
    except openai.APIStatusError as e:
        return e


def split(results: list[Any]) -> tuple[list[Any], list[openai.RateLimitError]]:
    ok = [r for r in results if not isinstance(r, Exception)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) + len(limited) == len(results), results
    return ok, limited


async def test_rpm_admits_exactly_the_limit_under_concurrency(server: Server, db: str) -> None:
    key, _ = new_key(db, "--project", "acme", "--rpm", "5")
    c = aclient(server.base_url, key)
    ok, limited = split(await asyncio.gather(*(complete(c) for _ in range(20))))
    assert (len(ok), len(limited)) == (5, 15)
    # Admission is atomic: the five successes saw 4, 3, 2, 1, 0 requests left, once each.
    remaining = sorted(r.headers["x-ratelimit-remaining-requests"] for r in ok)
    assert remaining == ["0", "1", "2", "3", "4"]
    for r in ok:
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in r.headers  # no TPM limit on this key
        assert r.parse().usage.completion_tokens == 4
    for e in limited:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded" and e.type == "requests"
        h = e.response.headers
        assert h["x-ratelimit-limit-requests"] == "5"
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert 1 <= int(h["retry-after"]) <= 60 and 0 < int(h["retry-after-ms"]) <= 60_000


async def test_tpm_admits_exactly_what_fits(server: Server, db: str) -> None:
    each = len(PROMPT) + 20  # reserved per request: prompt + max_tokens
    key, _ = new_key(db, "--project", "acme", "--tpm", str(3 * each + each // 2))
    c = aclient(server.base_url, key)
    ok, limited = split(await asyncio.gather(*(complete(c, 20) for _ in range(10))))
    assert (len(ok), len(limited)) == (3, 7)
    tpm = str(3 * each + each // 2)
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in ok) == [
        each // 2, each + each // 2, 2 * each + each // 2
    ]  # fmt: skip
    for r in ok:
        assert r.headers["x-ratelimit-limit-tokens"] == tpm
        assert r.parse().usage.total_tokens == each  # banned EOS: settles at the reservation
    for e in limited:
        assert e.code == "rate_limit_exceeded" and e.type == "tokens"
        h = e.response.headers
        assert h["x-ratelimit-limit-tokens"] == tpm
        assert int(h["x-ratelimit-remaining-tokens"]) < each
        assert h["x-ratelimit-reset-tokens"].endswith("s") and int(h["retry-after"]) >= 1
    too_big = await complete(c, 3 * each + each)  # larger than the whole limit
    assert (
        isinstance(too_big, openai.RateLimitError) and "retry-after" not in too_big.response.headers
    )


async def test_tpm_settles_with_the_real_count(server: Server, db: str) -> None:
    key, key_id = new_key(db, "--project", "acme", "--tpm", "2000")
    c = aclient(server.base_url, key)
    stream = await c.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=400, temperature=0, logit_bias=NO_EOS, stream=True
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.close()  # reserved 410 tokens, used a few
    used = await settled_total(server, key, key_id)
    assert len(PROMPT) + 3 <= used < 410
    r = await complete(c, 5)
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 2000 - used - (len(PROMPT) + 5)


async def settled_total(server: Server, key: str, key_id: str) -> int:
    """The key's total tokens in the ledger, once its requests have all ended."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as h:
        for _ in range(100):
            r = await h.get(server.base_url + "/usage", params={"group_by": "key,status"})
            rows = [d for d in r.json()["data"] if d["key"] == key_id]
            if rows and all(d["status"] != "pending" for d in rows):
                return sum(d["total_tokens"] for d in rows)
            await asyncio.sleep(0.05)
    raise AssertionError("the request never ended in the ledger")


def ask_tier(c: openai.OpenAI, service_tier: str | None = None) -> Any:
    """A 2-token completion in ``service_tier`` (none: the key's default, ``auto``)."""
    body = {"service_tier": service_tier} if service_tier else None
    return c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=body)


def test_auto_falls_back_to_over_limit_only_when_granted(server: Server, db: str) -> None:
    key, _ = new_key(db, "--project", "acme", "--rpm", "1", "--tiers", "default,over-limit")
    c = client(server.base_url, key)
    assert ask_tier(c).service_tier == "default"
    assert ask_tier(c).service_tier == "over-limit"  # auto, limited: falls back
    assert ask_tier(c, "over-limit").service_tier == "over-limit"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c, "default")
    plain, _ = new_key(db, "--project", "acme", "--rpm", "1")
    c = client(server.base_url, plain)
    assert ask_tier(c).service_tier == "default"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c)


def test_no_limit_tier_is_exempt(server: Server, db: str) -> None:
    key, _ = new_key(db, "--project", "acme", "--rpm", "1", "--tiers", "default,no-limit")
    c = client(server.base_url, key)
    assert ask_tier(c).service_tier == "default"
    for _ in range(3):
        assert ask_tier(c, "no-limit").service_tier == "no-limit"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c, "default")


@pytest.fixture(scope="module")
def one_slot(db: str) -> Iterator[Server]:
    s = start_server(
        "--api-key", ADMIN, "--db", db + ".q", "--max-num-seqs", "1", "--max-queue", "2",
        "--threads", "1",
    )  # fmt: skip
    yield s
    stop_server(s)


async def test_priorities_and_a_full_queue(one_slot: Server) -> None:
    c = aclient(one_slot.base_url, ADMIN)
    hold = await c.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=1000, temperature=0, logit_bias=NO_EOS, stream=True
    )
    await hold.__aiter__().__anext__()  # the only slot is busy now
    order: list[str] = []

    async def wait_in_line(tier: str) -> None:
        r = await c.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={"service_tier": tier}
        )
        assert r.service_tier == tier  # type: ignore[attr-defined]
        order.append(tier)

    flex = asyncio.create_task(wait_in_line("flex"))
    await asyncio.sleep(0.5)
    default = asyncio.create_task(wait_in_line("default"))
    await asyncio.sleep(0.5)
    # 1 running + 2 waiting = max-num-seqs + max-queue: the next one is refused, quickly.
    t0 = time.monotonic()
    full = await complete(c)
    assert isinstance(full, openai.InternalServerError) and full.status_code == 503
    assert full.code == "engine_overloaded" and full.response.headers["retry-after"] == "1"
    assert time.monotonic() - t0 < 5
    await hold.close()  # frees the slot: default goes first although flex came earlier
    await asyncio.wait_for(asyncio.gather(flex, default), 120)
    assert order == ["default", "flex"]
