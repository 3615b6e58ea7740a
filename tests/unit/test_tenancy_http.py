"""Keys, projects, tiers and rate limits over HTTP, through the official client, in-process on
the fake runner (tests/harness.py): what a tenant sees needs no real model. The real-server
file (tests/e2e/test_tenancy_keys.py) keeps the CLI and the server as separate processes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.routing import Mount, Route

from tests.harness import ADMIN_KEY, MODEL, AppStack
from tokenmill.api.pages import STATIC_PATH
from tokenmill.cli import main as cli_main

MESSAGES = [{"role": "user", "content": "Say hi"}]
PROMPT = [10 + i for i in range(10)]  # token ids: exactly 10 prompt tokens


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[AppStack]:
    s = AppStack(tmp_path, max_num_seqs=8, flex_timeout=30)
    for project in ("acme", "labs"):
        s.keys.create_project(project)
    s.open()
    yield s
    s.close()


def ask(c: openai.OpenAI, **kw: Any) -> Any:
    return c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0, **kw
    )


def listed(stack: AppStack, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What ``tokenmill ARGS`` prints on the stack's database."""
    capsys.readouterr()
    assert cli_main([*args, "--db", str(stack.db.url.database)]) == 0
    return capsys.readouterr().out


# -- keys and projects ------------------------------------------------------------------------


def test_a_key_works_until_revoked(stack: AppStack, capsys: pytest.CaptureFixture[str]) -> None:
    secret, key_id = stack.keys.create_key(["acme"], name="ci")
    c = stack.official(secret)
    assert ask(c).service_tier == "default"
    out = listed(stack, capsys, "keys", "list")
    assert key_id in out and "acme" in out and "active" in out
    assert secret not in out and secret[8:] not in out  # never the secret
    assert stack.keys.revoke(key_id)
    with pytest.raises(openai.AuthenticationError) as e:
        ask(c)
    assert "revoked" in e.value.message
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_an_expired_key_is_refused(stack: AppStack) -> None:
    secret, _ = stack.keys.create_key(["acme"], expires_at=time.time() + 0.5)
    c = stack.official(secret)
    ask(c)
    time.sleep(0.6)
    with pytest.raises(openai.AuthenticationError) as e:
        ask(c)
    assert "expired" in e.value.message


def test_an_unknown_key_is_401(stack: AppStack) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        ask(stack.official("tm-not-a-key"))
    assert e.value.status_code == 401 and "Incorrect API key" in e.value.message


async def test_the_project_is_chosen_and_billed_or_403(stack: AppStack) -> None:
    secret, key_id = stack.keys.create_key(["acme", "labs"])
    ask(stack.official(secret))  # no project sent: the key's first
    ask(stack.official(secret, project="labs"))
    for other in ("default", "nope"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(stack.official(secret, project=other))
        assert e.value.code == "project_not_allowed"
    rows = [r for r in await stack.rows() if r.key_id == key_id]
    assert sorted(r.project_id for r in rows) == ["acme", "labs"]  # the refused ones: no row


def test_a_tier_not_granted_is_403_and_granted_ones_are_echoed(stack: AppStack) -> None:
    secret, _ = stack.keys.create_key(["acme"])  # the default grant: default and flex
    c = stack.official(secret)
    assert ask(c, service_tier="flex").service_tier == "flex"
    assert ask(c, service_tier="auto").service_tier == "default"
    for tier in ("no-limit", "over-limit"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(c, service_tier=tier)
        assert e.value.code == "tier_not_allowed" and e.value.param == "service_tier"
    flex_only, _ = stack.keys.create_key(["acme"], tiers=["flex"])
    with pytest.raises(openai.PermissionDeniedError):
        ask(stack.official(flex_only))  # auto needs default or over-limit
    assert ask(stack.official(flex_only), service_tier="flex").service_tier == "flex"


def test_a_key_limited_to_other_models_is_403(stack: AppStack) -> None:
    other, _ = stack.keys.create_key(["acme"], models=["some-other-model"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(stack.official(other))
    assert e.value.code == "model_not_allowed" and e.value.param == "model"
    mine, _ = stack.keys.create_key(["acme"], models=[MODEL])
    assert ask(stack.official(mine)).usage is not None


async def test_a_static_key_is_an_admin_key_for_any_project(stack: AppStack) -> None:
    assert ask(stack.official(), service_tier="no-limit").service_tier == "no-limit"
    r = ask(stack.official(project="labs"))
    r2 = ask(stack.official(project="proj-1"))  # not even created: admin keys act for any
    by_id = {row.request_id: row for row in await stack.rows()}
    assert by_id[r.id].project_id == "labs" and by_id[r2.id].project_id == "proj-1"
    assert by_id[r.id].key_id.startswith("static-")  # a fingerprint, not the key
    assert ADMIN_KEY not in by_id[r.id].key_id


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/v1/usage"), ("POST", "/v1/completions"),
     ("POST", "/v1/chat/completions"), ("GET", "/metrics")],
)  # fmt: skip
def test_every_route_but_the_probes_needs_a_key(stack: AppStack, method: str, path: str) -> None:
    raw = stack.sync_client(headers={})
    r = raw.request(method, path, json={})
    assert r.status_code == 401, (path, r.status_code)
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert raw.get("/health").status_code == 200 and raw.get("/ready").status_code == 200


# Served without a key: they describe the API or are the browser pages, and hold no data.
OPEN_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/", "/playground", "/usage"}


def test_every_route_of_the_app_needs_a_key_but_the_open_ones(stack: AppStack) -> None:
    """The list above, kept complete: each route the app has (new ones too) answers a call
    without a key with a 401, unless it is named open here. The API's routes are read from
    its schema (FastAPI keeps included routers' routes to itself), the rest from the app."""
    raw = stack.sync_client(headers={})
    routes = {(path, m.upper()) for path, ops in stack.app.openapi()["paths"].items() for m in ops}
    for route in stack.app.routes:
        if isinstance(route, Mount):  # the pages' static files (tests/unit/test_pages_http.py)
            assert route.path == STATIC_PATH
        elif isinstance(route, Route):
            routes |= {(route.path, m) for m in route.methods or () if m != "HEAD"}
    assert ("/v1/chat/completions", "POST") in routes and ("/metrics", "GET") in routes
    seen = set()
    for path, method in sorted(routes):
        if path in OPEN_ROUTES:
            seen.add(path)
            continue
        r = raw.request(method, re.sub(r"\{[^}]+\}", "x", path), json={})
        assert r.status_code == 401, (method, path, r.status_code)
    assert seen == OPEN_ROUTES  # none of the open ones went missing or renamed


def test_the_schema_and_docs_need_no_key(stack: AppStack) -> None:
    """As vLLM does: they describe the API and hold no data (no keys, models or usage)."""
    raw = stack.sync_client(headers={})
    r = raw.get("/openapi.json")
    assert r.status_code == 200
    assert ADMIN_KEY not in r.text and MODEL not in r.text
    assert "/v1/chat/completions" in r.json()["paths"]
    assert raw.get("/docs").status_code == 200


def test_key_material_is_never_logged(stack: AppStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret, key_id = stack.keys.create_key(["acme"])
    ask(stack.official(secret))
    stack.sync_client(headers={"Authorization": "Bearer tm-wrong-secret"}).get("/v1/models")
    # Messages and the fields of each request's line (api/requestlog.py).
    log = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    assert key_id in log  # requests are logged, by key id
    for material in (secret, secret[3:20], ADMIN_KEY, "tm-wrong-secret"):
        assert material not in log


def test_big_headers_are_431_and_cors_is_off(stack: AppStack) -> None:
    http = stack.sync_client()
    r = http.get("/v1/models", headers={"X-Big": "x" * 20_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_fields_too_large"
    pre = http.options(
        "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    r = http.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_an_open_server_closes_when_the_first_key_is_created(tmp_path: Path) -> None:
    stack = AppStack(tmp_path, api_keys=(), cors_origins=("https://app.example",))
    stack.open()
    try:
        anyone = stack.official("anything")
        assert ask(anyone).usage is not None
        pre = stack.sync_client(headers={}).options(
            "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.headers.get("access-control-allow-origin") == "https://app.example"
        secret, key_id = stack.keys.create_key(["default"])
        with pytest.raises(openai.AuthenticationError):
            ask(anyone)
        assert ask(stack.official(secret)).usage is not None
        stack.keys.revoke(key_id)
        with pytest.raises(openai.AuthenticationError):  # revoking every key does not reopen
            ask(anyone)
    finally:
        stack.close()


# -- rate limits and tiers --------------------------------------------------------------------


async def complete(c: openai.AsyncOpenAI, max_tokens: int = 4, **kw: Any) -> Any:
    """The raw response (headers and parsed body), or the API error raised."""
    try:
        return await c.completions.with_raw_response.create(
            model=MODEL, prompt=PROMPT, max_tokens=max_tokens, temperature=0, **kw
        )
    except openai.APIStatusError as e:
        return e


def split(results: list[Any]) -> tuple[list[Any], list[openai.RateLimitError]]:
    ok = [r for r in results if not isinstance(r, Exception)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) + len(limited) == len(results), results
    return ok, limited


async def test_rpm_admits_exactly_the_limit_under_concurrency(stack: AppStack) -> None:
    key, _ = stack.keys.create_key(["acme"], rpm=5)
    c = stack.official_async(key)
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


async def test_tpm_admits_exactly_what_fits(stack: AppStack) -> None:
    each = len(PROMPT) + 20  # reserved per request: prompt + max_tokens
    tpm = 3 * each + each // 2
    key, _ = stack.keys.create_key(["acme"], tpm=tpm)
    c = stack.official_async(key)
    ok, limited = split(await asyncio.gather(*(complete(c, 20) for _ in range(10))))
    assert (len(ok), len(limited)) == (3, 7)
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in ok) == [
        each // 2, each + each // 2, 2 * each + each // 2
    ]  # fmt: skip
    for r in ok:
        assert r.headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert r.parse().usage.total_tokens == each  # the fake never ends: the reservation
    for e in limited:
        assert e.code == "rate_limit_exceeded" and e.type == "tokens"
        h = e.response.headers
        assert h["x-ratelimit-limit-tokens"] == str(tpm)
        assert int(h["x-ratelimit-remaining-tokens"]) < each
        assert h["x-ratelimit-reset-tokens"].endswith("s") and int(h["retry-after"]) >= 1
    too_big = await complete(c, 4 * each)  # larger than the whole limit: no retry helps
    assert isinstance(too_big, openai.RateLimitError)
    assert "retry-after" not in too_big.response.headers


def ask_tier(c: openai.OpenAI, service_tier: str | None = None) -> Any:
    """A 2-token completion in ``service_tier`` (none: the key's default, ``auto``)."""
    body = {"service_tier": service_tier} if service_tier else None
    return c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body=body)


def test_auto_falls_back_to_over_limit_only_when_granted(stack: AppStack) -> None:
    key, _ = stack.keys.create_key(["acme"], rpm=1, tiers=["default", "over-limit"])
    c = stack.official(key)
    assert ask_tier(c).service_tier == "default"
    assert ask_tier(c).service_tier == "over-limit"  # auto, limited: falls back
    assert ask_tier(c, "over-limit").service_tier == "over-limit"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c, "default")
    plain, _ = stack.keys.create_key(["acme"], rpm=1)
    c = stack.official(plain)
    assert ask_tier(c).service_tier == "default"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c)


def test_the_no_limit_tier_is_exempt(stack: AppStack) -> None:
    key, _ = stack.keys.create_key(["acme"], rpm=1, tiers=["default", "no-limit"])
    c = stack.official(key)
    assert ask_tier(c).service_tier == "default"
    for _ in range(3):
        assert ask_tier(c, "no-limit").service_tier == "no-limit"
    with pytest.raises(openai.RateLimitError):
        ask_tier(c, "default")


async def test_default_goes_before_flex_and_a_full_queue_is_503(tmp_path: Path) -> None:
    # One slot and two places in line: three requests wait (the engine is not started), the
    # fourth is refused at once; started, the engine serves default before the earlier flex.
    stack = AppStack(tmp_path, start=False, max_num_seqs=1, max_queue=2, flex_timeout=30)
    stack.open()
    try:
        c = stack.official_async()
        order: list[str] = []

        async def wait_in_line(tier: str) -> None:
            r = await complete(c, 3, extra_body={"service_tier": tier})
            assert r.parse().service_tier == tier
            order.append(tier)

        waiting = []
        for tier in ("flex", "flex", "default"):
            waiting.append(asyncio.create_task(wait_in_line(tier)))
            # In the engine's inbox, not just counted in: admission reserves a place before
            # the ledger's pending row is written, and submits only after it.
            while stack.engine.loop.inbox_size < len(waiting):
                await asyncio.sleep(0.01)
        t0 = time.monotonic()
        full = await complete(c)
        assert isinstance(full, openai.InternalServerError) and full.status_code == 503
        assert full.code == "engine_overloaded" and full.response.headers["retry-after"] == "1"
        assert time.monotonic() - t0 < 2
        stack.start_engine()
        await asyncio.wait_for(asyncio.gather(*waiting), 30)
        assert order == ["default", "flex", "flex"]
    finally:
        stack.close()


def test_usage_route_reports_this_keys_tokens(stack: AppStack) -> None:
    key, key_id = stack.keys.create_key(["acme"])
    r = ask_tier(stack.official(key))
    http = stack.sync_client(headers={"Authorization": f"Bearer {key}"})
    for _ in range(100):  # the ledger's writer commits the final row soon after the answer
        data = http.get("/v1/usage", params={"group_by": "key,status"}).json()["data"]
        if data and all(d["status"] != "pending" for d in data):
            break
        time.sleep(0.02)
    assert [(d["key"], d["status"]) for d in data] == [(key_id, "finished")]
    assert data[0]["total_tokens"] == r.usage.total_tokens == len(PROMPT) + 2
