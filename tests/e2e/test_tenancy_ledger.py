"""The usage ledger loses nothing: after mixed load its rows equal the usage the clients got,
and after a SIGKILL every request that had started has a row. SQLite, and PostgreSQL where
``TOKENMILL_TEST_DATABASE_URL`` is set (``db_url`` in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.helpers import NO_EOS
from tests.e2e.tenancy_helpers import MESSAGES, MODEL, aclient, cli, new_key

PRICES = {"models": {MODEL: {"input": 2.0, "cached_input": 1.0, "output": 4.0}}}


def ledger_rows(db: str) -> dict[str, dict[str, str]]:
    """Every row, through ``tokenmill usage --requests --format csv``."""
    out = cli(db, "usage", "--requests", "--format", "csv").stdout
    return {r["request_id"]: r for r in csv.DictReader(io.StringIO(out))}


async def settled(db: str, count: int) -> dict[str, dict[str, str]]:
    """The rows once ``count`` exist and none is pending (finals are written asynchronously)."""
    for _ in range(100):
        rows = ledger_rows(db)
        if len(rows) >= count and all(r["status"] != "pending" for r in rows.values()):
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"ledger did not settle: {ledger_rows(db)}")


def tokens(row: dict[str, str]) -> tuple[int, int, int]:
    return int(row["prompt_tokens"]), int(row["cached_tokens"]), int(row["completion_tokens"])


def usage_tuple(u: Any) -> tuple[int, int, int]:
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return u.prompt_tokens, cached, u.completion_tokens


class Load:
    """Mixed requests; records the usage each client received, by response id."""

    def __init__(self, c: openai.AsyncOpenAI, raw: httpx.AsyncClient) -> None:
        self.c, self.raw = c, raw
        self.usage: dict[str, tuple[int, int, int]] = {}
        self.tiers: dict[str, str] = {}
        self.unreported: set[str] = set()  # streams without include_usage
        self.cancelled = 0
        self.errors = 0

    async def chat(self, **kw: Any) -> None:
        r = await self.c.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=8,
            **kw,  # type: ignore[arg-type]
        )
        assert r.usage is not None
        self.usage[r.id] = usage_tuple(r.usage)
        self.tiers[r.id] = r.service_tier or ""

    async def chat_stream(self, include_usage: bool, **kw: Any) -> None:
        stream = await self.c.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": include_usage}, **kw,
        )  # fmt: skip
        rid, got = "", None
        async for chunk in stream:
            rid = chunk.id
            got = chunk.usage or got
        if include_usage:
            assert got is not None
            self.usage[rid] = usage_tuple(got)
        else:
            self.unreported.add(rid)

    async def completion(self, stream: bool, **kw: Any) -> None:
        args = dict(model=MODEL, prompt=["Once upon", "The sky is"], max_tokens=6, **kw)
        if not stream:
            r = await self.c.completions.create(**args)  # type: ignore[call-overload]
            self.usage[r.id] = usage_tuple(r.usage)
            return
        s = await self.c.completions.create(
            stream=True, stream_options={"include_usage": True}, **args
        )  # type: ignore[call-overload]
        rid, got = "", None
        async for chunk in s:
            rid, got = chunk.id, chunk.usage or got
        self.usage[rid] = usage_tuple(got)

    async def cancel_stream(self) -> None:
        stream = await self.c.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=300, stream=True,  # type: ignore[arg-type]
            logit_bias=NO_EOS,
        )  # fmt: skip
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 4:
                break
        await stream.close()
        self.cancelled += 1

    async def cancel_waiting(self) -> None:
        """A non-streamed request whose client gives up before the answer."""
        body = {"model": MODEL, "prompt": "Count:", "max_tokens": 400, "logit_bias": NO_EOS}
        with pytest.raises(httpx.ReadTimeout):
            await self.raw.post("/v1/completions", json=body, timeout=1.0)
        self.cancelled += 1

    async def bad(self) -> None:
        for body in (
            {"model": MODEL, "prompt": "x", "temperature": 5},
            {"model": "no", "prompt": "x"},
        ):
            r = await self.raw.post("/v1/completions", json=body)
            assert r.status_code in (400, 404)
            self.errors += 1

    def round(self) -> list[Any]:
        # The stream without usage is greedy: its row must show all 8 tokens, and at
        # temperature 1 "Say hi" may end sooner (seen once in CI: 6).
        return [
            self.chat(), self.chat(n=3, temperature=0.8), self.chat(service_tier="flex"),
            self.chat_stream(True), self.chat_stream(True, n=2),
            self.chat_stream(False, temperature=0),
            self.completion(False), self.completion(False, n=2), self.completion(True),
            self.cancel_stream(), self.cancel_waiting(), self.bad(),
        ]  # fmt: skip


@pytest.fixture
def ledger_server(db_url: str, tmp_path: Path) -> Iterator[tuple[Server, str, str]]:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    cli(db_url, "projects", "create", "acme")
    key, _ = new_key(db_url, "--project", "acme")
    s = start_server(
        "--api-key", "admin", "--db", db_url, "--prices", str(prices), "--max-num-seqs", "4",
        "--threads", "1",
    )  # fmt: skip
    yield s, db_url, key
    stop_server(s)


async def test_ledger_equals_the_usage_clients_received(
    ledger_server: tuple[Server, str, str],
) -> None:
    server, db, key = ledger_server
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.root, headers=headers, timeout=60) as raw:
        load = Load(aclient(server.base_url, key), raw)
        await asyncio.gather(*load.round(), *load.round())
        admitted = len(load.usage) + len(load.unreported) + load.cancelled
        rows = await settled(db, admitted)
        assert len(rows) == admitted  # refused requests (400/404) leave no row
        assert load.errors == 4
        for rid, got in load.usage.items():  # row for row
            assert rid in rows, rid
            assert rows[rid]["status"] == "finished"
            assert tokens(rows[rid]) == got, rid
            assert rows[rid]["project"] == "acme"
            p, c, out = got
            price = ((p - c) * 2.0 + c * 1.0 + out * 4.0) / 1e6
            if load.tiers.get(rid) == "flex":
                assert rows[rid]["tier"] == "flex"
                price *= 0.5  # flex is billed at a discount
            assert float(rows[rid]["cost"]) == pytest.approx(price, abs=1e-6)
        for rid in load.unreported:
            assert rows[rid]["status"] == "finished" and tokens(rows[rid])[2] == 8
        cancelled = [r for r in rows.values() if r["status"] == "cancelled"]
        assert len(cancelled) == load.cancelled
        assert all(
            int(r["prompt_tokens"]) > 0 and int(r["completion_tokens"]) < 300 for r in cancelled
        )

        # GET /v1/usage agrees with the rows, in total and grouped by model and day.
        r = await raw.get("/v1/usage", params={"group_by": "model,day"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["project_id"] == "acme"
        [group] = body["data"]
        assert group["model"] == MODEL
        assert group["day"] == datetime.now(timezone.utc).strftime("%Y-%m-%d")
        assert group["requests"] == admitted
        assert group["prompt_tokens"] == sum(tokens(r)[0] for r in rows.values())
        assert group["completion_tokens"] == sum(tokens(r)[2] for r in rows.values())
        assert group["cost"] == pytest.approx(
            sum(float(r["cost"]) for r in rows.values()), abs=1e-5
        )
        r = await raw.get("/v1/usage", params={"start_time": 4102444800})  # year 2100
        assert r.json()["data"][0]["requests"] == 0
        r = await raw.get("/v1/usage", params={"group_by": "prompt"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"
    # The admin's project (default) saw none of it.
    admin = httpx.get(server.base_url + "/usage", headers={"Authorization": "Bearer admin"})
    assert admin.json()["data"][0]["requests"] == 0
    table = cli(db, "usage", "--group-by", "project,tier").stdout
    assert "acme" in table and "flex" in table


@pytest.mark.slow
async def test_nothing_is_lost_when_the_server_is_killed(db_url: str) -> None:
    cli(db_url, "projects", "create", "acme")
    key, _ = new_key(db_url, "--project", "acme")
    s = start_server("--db", db_url, "--max-num-seqs", "4", "--threads", "1")
    c = aclient(s.base_url, key)
    done = await c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=4,
        user="before",  # type: ignore[arg-type]
    )
    assert done.usage is not None
    chunks: dict[str, int] = {}  # per started request: chunks received

    async def stream(i: int) -> None:
        st = await c.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=500, stream=True,  # type: ignore[arg-type]
            logit_bias=NO_EOS, user=f"crash-{i}",
        )  # fmt: skip
        async for _ in st:
            # Any chunk means the server answered: the request has started.
            chunks[f"crash-{i}"] = chunks.get(f"crash-{i}", 0) + 1

    tasks = [asyncio.create_task(stream(i)) for i in range(6)]  # 4 run, 2 wait in the queue
    while len(chunks) < 6 or max(chunks.values()) < 5:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # generation goes on: progress (every second) gets written
    started = list(chunks)
    s.proc.kill()  # SIGKILL: no finally, no shutdown
    s.proc.wait()
    await asyncio.gather(*tasks, return_exceptions=True)

    again = start_server("--db", db_url, "--max-num-seqs", "4", "--threads", "1")
    try:
        rows = {r["user"]: r for r in ledger_rows(db_url).values()}
        assert set(rows) == {"before", *started}
        assert rows["before"]["status"] == "finished"
        assert tokens(rows["before"]) == usage_tuple(done.usage)
        interrupted = [rows[u] for u in started]
        assert all(r["status"] == "interrupted" for r in interrupted)
        assert all(int(r["prompt_tokens"]) == done.usage.prompt_tokens for r in interrupted)
        assert all(int(r["completion_tokens"]) < 500 for r in interrupted)
        # Progress was kept (a running request's tokens are written every second).
        assert any(int(r["completion_tokens"]) > 0 for r in interrupted), (interrupted, chunks)
        assert any("marked interrupted" in line for line in again.output)
    finally:
        stop_server(again)
