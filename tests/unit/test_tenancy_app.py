"""The whole HTTP stack in-process on the fake runner: the failure paths a real model will not
produce on demand (engine errors, a flex request that waits too long, a full queue) still end
with exactly one finalized ledger row and no leaked reservation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tokenmill.api.app import create_app
from tokenmill.engine.front import AsyncEngine
from tokenmill.runner.fake import FakeRunner
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ModelRegistry
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured import GrammarCompiler, make_tokenizer
from tokenmill.tenancy.auth import StaticKeys
from tokenmill.tenancy.db import open_database
from tokenmill.tenancy.keys import KeyStore
from tokenmill.tenancy.ledger import Ledger
from tokenmill.tenancy.schema import UsageRow
from tokenmill.tenancy.service import Tenancy

ADMIN = {"Authorization": "Bearer admin"}


class Stack:
    def __init__(self, tmp: Path, start: bool, max_queue: int = 0, flex_timeout: float = 0.3):
        self.runner = FakeRunner()
        self.engine = AsyncEngine(self.runner, 1, 64, max_queue=max_queue)
        grammars = GrammarCompiler(make_tokenizer(self.runner.info))
        template = ChatTemplate(None, "", "")
        ctx = ServingContext(self.engine, ModelRegistry("fake"), template, 4, grammars)
        self.db = open_database(str(tmp / "t.db"))
        self.ledger = Ledger(self.db)
        tenancy = Tenancy(
            KeyStore(self.db), self.ledger, StaticKeys(("admin",)), self.engine, flex_timeout
        )
        self.app = create_app(ctx, tenancy, 1 << 20)
        self.started = start

    async def rows(self) -> list[UsageRow]:
        await self.ledger.flush()
        return self.ledger.rows()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for s in made:
        if s.started:
            s.engine.stop()
        s.ledger.stop()
        s.db.dispose()


async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    stack.ledger.start()
    if stack.started:
        stack.engine.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.app), base_url="http://t", headers=ADMIN
    ) as c:
        yield c


def body(**kw: object) -> dict[str, object]:
    return {"model": "fake", "prompt": "hello", "max_tokens": 5, "temperature": 0, **kw}


async def test_engine_failure_is_recorded_as_error(
    tmp_path: Path, stack_factory: list[Stack]
) -> None:
    stack = Stack(tmp_path, start=True)
    stack_factory.append(stack)

    def broken(batch: object) -> object:
        raise RuntimeError("simulated engine bug")

    stack.runner.decode = broken  # type: ignore[method-assign,assignment]
    async for c in client(stack):
        r = await c.post("/v1/completions", json=body())
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        r = await c.post("/v1/completions", json=body(stream=True))
        assert r.status_code == 200 and "engine_error" in r.text
        rows = await stack.rows()
    assert sorted(r.status for r in rows) == ["error", "error"]
    assert all(r.prompt_tokens == 5 for r in rows)
    assert stack.engine.admitted == 0


async def test_flex_gives_up_after_its_timeout(tmp_path: Path, stack_factory: list[Stack]) -> None:
    stack = Stack(tmp_path, start=False, flex_timeout=0.3)  # nothing ever runs
    stack_factory.append(stack)
    async for c in client(stack):
        r = await c.post("/v1/completions", json=body(service_tier="flex"))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_timeout"
        assert int(r.headers["retry-after"]) >= 1
        r = await c.post("/v1/completions", json=body(service_tier="flex", stream=True))
        assert r.status_code == 200 and "queue_timeout" in r.text
        rows = await stack.rows()
    assert [r.status for r in rows] == ["timeout", "timeout"]
    assert all(r.tier == "flex" for r in rows)
    assert stack.engine.admitted == 0


async def test_full_queue_is_503_and_frees_up(tmp_path: Path, stack_factory: list[Stack]) -> None:
    stack = Stack(tmp_path, start=False, max_queue=1, flex_timeout=1.0)  # room for 2 sequences
    stack_factory.append(stack)
    async for c in client(stack):
        waiting = [
            asyncio.create_task(c.post("/v1/completions", json=body(service_tier="flex")))
            for _ in range(2)
        ]
        while stack.engine.admitted < 2:
            await asyncio.sleep(0.01)
        r = await c.post("/v1/completions", json=body())
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_overloaded"
        assert r.headers["retry-after"] == "1"
        assert [w.status_code for w in await asyncio.gather(*waiting)] == [503, 503]
        assert stack.engine.admitted == 0
        rows = await stack.rows()
    assert len(rows) == 2  # the refused request was never admitted: no row


async def test_client_gone_before_the_answer_is_cancelled(
    tmp_path: Path, stack_factory: list[Stack]
) -> None:
    stack = Stack(tmp_path, start=False, flex_timeout=30)
    stack_factory.append(stack)
    async for c in client(stack):
        task = asyncio.create_task(c.post("/v1/completions", json=body(service_tier="flex")))
        while stack.engine.admitted < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the pending row is being committed
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(100):
            rows = await stack.rows()
            if rows and rows[0].status != "pending":
                break
            await asyncio.sleep(0.02)
    assert [r.status for r in rows] == ["cancelled"]
    assert stack.engine.admitted == 0
