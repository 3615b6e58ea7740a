"""The real server under faults and shutdown: probes tell the truth, a dying engine ends the
process, injected runner faults fail only their batch, and SIGTERM drains running streams,
finalizes the ledger and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.helpers import NO_EOS
from tests.e2e.tenancy_helpers import MODEL
from tests.e2e.test_tenancy_ledger import ledger_rows

ADMIN = "tm-admin"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}]}


def fresh_db() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="tokenmill-rel-"), "t.db")


def faulty_server(*extra: str, db: str | None = None) -> Server:
    return start_server("--api-key", ADMIN, "--fault-injection", "--db", db or fresh_db(), *extra)


def arm(server: Server, kind: str, **kw: float) -> None:
    r = httpx.post(f"{server.root}/internal/faults", json={"kind": kind, **kw}, headers=HEADERS)
    assert r.status_code == 200, r.text


def chat(server: Server, **kw: object) -> httpx.Response:
    body = {**CHAT, "max_tokens": 8, **kw}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=HEADERS, timeout=60)


def wait_exit(server: Server, timeout: float = 60) -> int:
    return server.proc.wait(timeout=timeout)


# -- one request cannot stop the engine ---------------------------------------------------------


def test_a_negative_seed_then_a_normal_request(server: Server, http: httpx.Client) -> None:
    for seed in (-1, -(2**63), 2**64 - 1):
        r = http.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 4, "seed": seed, "temperature": 1}
        )
        assert r.status_code == 200, r.text
    again = http.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 4, "seed": -1, "temperature": 1}
    )
    first = http.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 4, "seed": -1, "temperature": 1}
    )
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    r = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4})
    assert r.status_code == 200
    assert http.get("/health").json()["status"] == "ok"


# -- probes ---------------------------------------------------------------------------------------


def test_probes_while_loading_then_ready() -> None:
    # Start without waiting for "ready": the probes answer while the model loads.
    import subprocess
    import sys

    from tests.e2e.conftest import free_port

    port = free_port()
    env = {**os.environ, "TOKENMILL_DB": fresh_db()}
    cmd = [sys.executable, "-m", "tokenmill", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    seen: set[tuple[str, int, str]] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                ready = httpx.get(f"{root}/ready", timeout=5)
                health = httpx.get(f"{root}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.add(("ready", ready.status_code, ready.json()["phase"]))
            seen.add(("health", health.status_code, health.json()["phase"]))
            if ready.status_code == 200:
                break
            r = httpx.post(f"{root}/v1/completions", json={"model": MODEL, "prompt": "x"})
            if r.status_code == 200:  # it became ready in between
                assert httpx.get(f"{root}/ready").status_code == 200
                continue
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            assert r.headers["retry-after"]
            time.sleep(0.05)
        assert ("ready", 200, "ready") in seen and ("health", 200, "ready") in seen
        if ("ready", 503, "loading") not in seen:  # the model loaded before the first probe
            pytest.skip("the model loaded before the server's first answer")
        assert ("health", 200, "loading") in seen  # alive while it loads
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_a_stuck_step_fails_liveness_until_it_ends() -> None:
    s = faulty_server("--stall-timeout", "1")
    try:
        assert httpx.get(f"{s.root}/health").status_code == 200
        arm(s, "stall", seconds=4)

        async def go() -> tuple[httpx.Response, list[int]]:
            async with httpx.AsyncClient(timeout=60) as c:
                task = asyncio.create_task(
                    c.post(f"{s.base_url}/chat/completions", json={**CHAT, "max_tokens": 4},
                           headers=HEADERS)
                )  # fmt: skip
                probes = []
                for _ in range(12):
                    await asyncio.sleep(0.25)
                    probes.append((await c.get(f"{s.root}/health")).status_code)
                return await task, probes

        answer, probes = asyncio.run(go())
        assert answer.status_code == 200  # the stalled request itself completes
        assert 503 in probes  # while the step ran past --stall-timeout
        assert httpx.get(f"{s.root}/health").status_code == 200  # and healthy again after
        assert httpx.get(f"{s.root}/ready").status_code == 200
    finally:
        stop_server(s)


def test_a_dead_engine_thread_exits_the_process_non_zero() -> None:
    s = faulty_server()
    try:
        arm(s, "crash")
        r = chat(s)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        assert wait_exit(s) == 70
        log = "".join(s.output)
        assert "the engine thread died" in log and "InjectedCrash" in log
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


# -- injected faults: only the failing batch fails ---------------------------------------------


def test_injected_faults_fail_only_their_batch_and_the_ledger_says_error() -> None:
    db = fresh_db()
    s = faulty_server("--max-num-seqs", "1", db=db)
    try:
        arm(s, "decode_error")
        r = chat(s)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        ok = chat(s)  # the next batch runs
        assert ok.status_code == 200, ok.text
        # A KV cache found full mid-decode: the batch is recomputed, nothing fails, and
        # greedy output is what it would have been.
        want = chat(s, temperature=0, max_tokens=12, logit_bias=NO_EOS).json()
        arm(s, "kv_full", count=2, skip=3)
        got = chat(s, temperature=0, max_tokens=12, logit_bias=NO_EOS)
        assert got.status_code == 200, got.text
        assert got.json()["choices"][0]["message"] == want["choices"][0]["message"]
        # Streams: the error arrives as an event, then [DONE].
        arm(s, "decode_error", skip=2)
        with httpx.stream(
            "POST", f"{s.base_url}/chat/completions", headers=HEADERS, timeout=60,
            json={**CHAT, "max_tokens": 20, "stream": True, "logit_bias": NO_EOS},
        ) as resp:  # fmt: skip
            text = "".join(resp.iter_text())
        assert '"code":"engine_error"' in text and text.endswith("data: [DONE]\n\n")
        assert httpx.get(f"{s.root}/health").status_code == 200
    finally:
        stop_server(s)
    assert s.proc.returncode == 0
    statuses = sorted(r["status"] for r in ledger_rows(db).values())
    assert statuses == ["error", "error", "finished", "finished", "finished"]


# -- SIGTERM -------------------------------------------------------------------------------------


async def _streams(s: Server, n: int, max_tokens: int) -> list[str | BaseException]:
    """Start ``n`` streams; return, per stream, its text or what ended it."""
    client = openai.AsyncOpenAI(base_url=s.base_url, api_key=ADMIN, max_retries=0, timeout=120)

    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Story {i}"}],
            max_tokens=max_tokens, stream=True, logit_bias=NO_EOS, temperature=0,
        )  # fmt: skip
        parts = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(1.5)  # all four are running
    s.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient() as c:
        late = await c.post(f"{s.base_url}/completions", json={"model": MODEL, "prompt": "x"},
                            headers=HEADERS)  # fmt: skip
        ready = await c.get(f"{s.root}/ready")
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert late.headers["retry-after"]
    assert ready.status_code == 503 and ready.json()["phase"] == "draining"
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return results


def test_sigterm_lets_four_running_streams_finish_and_exits_0() -> None:
    db = fresh_db()
    s = faulty_server("--max-num-seqs", "4", db=db)
    results = asyncio.run(_streams(s, 4, max_tokens=120))
    assert wait_exit(s) == 0
    assert all(isinstance(r, str) and r for r in results), results
    rows = ledger_rows(db).values()
    assert sorted(r["status"] for r in rows) == ["finished"] * 4
    assert all(r["completion_tokens"] == "120" for r in rows)


def test_sigterm_past_the_timeout_ends_streams_with_an_error_event(tmp_path: Path) -> None:
    db = fresh_db()
    s = faulty_server("--max-num-seqs", "4", "--shutdown-timeout", "1", db=db)
    results = asyncio.run(_streams(s, 4, max_tokens=3000))
    assert wait_exit(s) == 0
    for r in results:  # the official client raises the error event it was sent
        assert isinstance(r, openai.APIError) and "shutting down" in str(r), r
    rows = ledger_rows(db).values()
    assert len(rows) == 4 and all(r["status"] == "error" for r in rows)
    assert all(int(r["completion_tokens"]) > 0 for r in rows)


def test_a_second_sigterm_ends_at_once_and_still_finalizes_the_ledger() -> None:
    db = fresh_db()
    s = faulty_server("--max-num-seqs", "2", "--shutdown-timeout", "600", db=db)

    async def go() -> list[BaseException | httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            body = {**CHAT, "max_tokens": 3000, "logit_bias": NO_EOS}
            tasks = [
                asyncio.create_task(
                    c.post(f"{s.base_url}/chat/completions", json=body, headers=HEADERS)
                )
                for _ in range(2)
            ]
            await asyncio.sleep(1.5)
            s.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            out = await asyncio.gather(*tasks, return_exceptions=True)
            assert time.monotonic() - started < 10  # not the 600 s grace
            return out

    results = asyncio.run(go())
    assert wait_exit(s, timeout=30) == 0
    for r in results:
        if isinstance(r, httpx.Response):
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    rows = ledger_rows(db).values()
    assert len(rows) == 2 and all(r["status"] in ("error", "interrupted") for r in rows), rows
