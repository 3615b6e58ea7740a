"""The whole HTTP stack in-process on the fake runner: the failure paths a real model will not
produce on demand (engine errors, a flex request that waits too long, a full queue) still end
with exactly one finalized ledger row and no leaked reservation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import AppStack


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[list[AppStack]]:
    made: list[AppStack] = []
    yield made
    for s in made:
        if s.started:
            s.close()


async def client(stack: AppStack) -> AsyncIterator[httpx.AsyncClient]:
    async for c in stack.client():
        yield c


def body(**kw: object) -> dict[str, object]:
    return {"model": "fake", "prompt": "hello", "max_tokens": 5, "temperature": 0, **kw}


async def test_engine_failure_is_recorded_as_error(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=True)
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


async def test_flex_gives_up_after_its_timeout(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=False, flex_timeout=0.3)  # nothing ever runs
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


async def test_full_queue_is_503_and_frees_up(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=False, max_queue=1, flex_timeout=1.0)  # room for 2 sequences
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
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=False, flex_timeout=30)
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


async def test_only_the_failing_batch_fails_and_no_row_stays_pending(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=False, max_num_seqs=2)  # two run, two wait
    stack_factory.append(stack)
    async for c in client(stack):
        # The batch after the first (both prompts) fails: both its requests, nobody else.
        r = await c.post("/internal/faults", json={"kind": "decode_error", "skip": 1})
        assert r.status_code == 200, r.text
        sent = [
            asyncio.create_task(
                c.post(
                    "/v1/completions", json=body(max_tokens=30, prompt=f"p{i}", stream=bool(i % 2))
                )
            )
            for i in range(4)
        ]
        while stack.engine.admitted < 4:  # all queued before the engine runs a step
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stack.start_engine()
        results = await asyncio.gather(*sent)
        failed = [r for r in results if "engine_error" in r.text]
        assert len(failed) == 2  # the two in the failing batch; the two waiting finish
        for r in results:
            if r not in failed:
                assert r.status_code == 200 and "error" not in r.text
        r = await c.post("/v1/completions", json=body())  # the next batch runs
        assert r.status_code == 200
        rows = await stack.rows()
    assert sorted(r.status for r in rows) == ["error", "error", "finished", "finished", "finished"]
    assert stack.faults.fired["decode_error"] == 1
    assert stack.engine.admitted == 0


async def test_a_negative_seed_does_not_stop_the_engine(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=True)
    stack_factory.append(stack)
    async for c in client(stack):
        first = await c.post("/v1/completions", json=body(seed=-1, temperature=1))
        assert first.status_code == 200, first.text
        again = await c.post("/v1/completions", json=body(seed=-1, temperature=1))
        assert again.json()["choices"] == first.json()["choices"]
        r = await c.post("/v1/completions", json=body())
        assert r.status_code == 200
        assert stack.engine.loop.alive


async def test_requests_ended_by_shutdown_get_a_503_and_an_error_row(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=True, max_num_seqs=2)
    stack_factory.append(stack)
    stack.faults.arm("stall", count=1000, seconds=0.01)  # slow steps: they are still running
    async for c in client(stack):
        sent = [
            asyncio.create_task(
                c.post(
                    "/v1/completions", json=body(max_tokens=400, stream=bool(i % 2), prompt=f"{i}")
                )
            )
            for i in range(2)
        ]
        while stack.engine.admitted < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        stack.engine.fail_all("The server is shutting down", "shutting_down")
        plain, streamed = await asyncio.gather(*sent)
        assert plain.status_code == 503 and plain.json()["error"]["code"] == "shutting_down"
        assert plain.headers["retry-after"] == "5"
        assert streamed.status_code == 200 and '"code":"shutting_down"' in streamed.text
        assert streamed.text.endswith("data: [DONE]\n\n")
        rows = await stack.rows()
    assert [r.status for r in rows] == ["error", "error"]
    assert stack.engine.admitted == 0


async def test_health_turns_503_when_the_engine_thread_dies(
    tmp_path: Path, stack_factory: list[AppStack]
) -> None:
    stack = AppStack(tmp_path, start=True)
    stack_factory.append(stack)
    async for c in client(stack):
        assert (await c.get("/health")).json() == {"status": "ok", "phase": "ready"}
        stack.faults.arm("crash")  # a BaseException: past every guard, the thread dies
        r = await c.post("/v1/completions", json=body())
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        health = await c.get("/health")
        assert health.status_code == 503, health.text
        assert "engine thread is not running" in health.json()["reason"]
        assert (await c.get("/ready")).status_code == 503
        rows = await stack.rows()
    assert [r.status for r in rows] == ["error"]
