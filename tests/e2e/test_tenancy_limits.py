"""TPM settles with the real token count when a real stream is cut short. The other limits,
tiers and the queue are tested in-process (tests/unit/test_tenancy_http.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.helpers import NO_EOS
from tests.e2e.tenancy_helpers import MODEL, aclient, new_db, new_key

ADMIN = "tm-static-admin-key"
PROMPT = [1000 + i for i in range(10)]  # token ids: exactly 10 prompt tokens


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
