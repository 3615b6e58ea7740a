"""``tokenmill serve --config FILE --ray ADDRESS`` on a local Ray cluster started by the test:
two models, one with two engine replicas (one thread each), through the official client;
streaming, abort on disconnect, and a replica killed mid-stream."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REDIS_ENV
from tests.e2e.conftest import API_KEY, MODEL, Server, free_port, start_server, stop_server
from tests.e2e.helpers import NO_EOS
from tests.e2e.tenancy_helpers import new_db, new_key
from tests.e2e.test_catalogue import GEMMA, gemma_path

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
# Ray's token authentication, with a token of the test's own for the cluster and its clients
# (without RAY_AUTH_MODE, `ray start` turns it on only if ~/.ray/auth_token exists, and then
# clients that do not set the mode are refused).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Ray cluster of our own (stopped after), its GCS address."""
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    temp = tmp_path_factory.mktemp("ray")
    subprocess.run(
        [*RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        check=True, env=env, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def fleet_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_db(tmp_path_factory.mktemp("fleet-db"), "acme")


@pytest.fixture(scope="module")
def fleet(
    ray_cluster: str, fleet_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Two ingress replicas (sharing rate limits through Redis when the tests have one) in
    front of the two models."""
    catalogue = tmp_path_factory.mktemp("fleet") / "models.toml"
    catalogue.write_text(
        f"""
[[models]]
name = "{MODEL}"
path = "embedded"
replicas = 2
threads = 1
ctx_size = 1024
max_num_seqs = 4
cache_ram = 64

[[models]]
name = "{GEMMA}"
path = "{gemma_path()}"
threads = 1
ctx_size = 1024
max_num_seqs = 2
cache_ram = 64
"""
    )
    redis = os.environ.get(REDIS_ENV)
    s = start_server(
        "--config", str(catalogue), "--ray", ray_cluster, "--api-key", API_KEY,
        "--db", fleet_db, "--ingress-replicas", "2", *(["--redis", redis] if redis else []),
        env=RAY_ENV, timeout=600,
    )  # fmt: skip
    yield s
    stop_server(s, timeout=120)


def official(s: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def usage_by_status(s: Server) -> dict[str, dict[str, int]]:
    r = httpx.get(
        f"{s.base_url}/usage",
        params={"group_by": "model,status"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    return {f"{d['model']}/{d['status']}": d for d in r.json()["data"]}


def test_both_models_answer_through_the_ingress(fleet: Server) -> None:
    c = official(fleet)
    assert [m.id for m in c.models.list().data] == [MODEL, GEMMA]
    for name in (MODEL, GEMMA):
        r = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
        )
        assert r.model == name and r.usage is not None and r.usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    # Structured output: the grammar is compiled at the ingress and again on the replica.
    r = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Pick one"}],
        extra_body={"guided_choice": ["red", "green"]}, max_tokens=5,
    )  # fmt: skip
    assert r.choices[0].message.content in ("red", "green")


async def test_streams_pass_token_by_token(fleet: Server) -> None:
    async with openai.AsyncOpenAI(base_url=fleet.base_url, api_key=API_KEY, max_retries=0) as c:

        async def stream(model: str, i: int) -> list[str]:
            s = await c.completions.create(
                model=model, prompt=f"Story {i}: once upon a time", max_tokens=12,
                temperature=0, stream=True,
            )  # fmt: skip
            return [ch.choices[0].text async for ch in s if ch.choices]

        pieces = await asyncio.gather(*(stream(m, i) for i in range(3) for m in (MODEL, GEMMA)))
    assert all(len(p) >= 6 for p in pieces)  # many events, not one at the end


def test_a_client_leaving_aborts_its_sequence(fleet: Server) -> None:
    c = official(fleet)
    before = usage_by_status(fleet).get(f"{GEMMA}/cancelled", {}).get("requests", 0)
    stream = c.completions.create(model=GEMMA, prompt="Count:", max_tokens=900, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    # The replica stopped generating: the row ends cancelled with a few tokens, not 900.
    for _ in range(100):
        rows = usage_by_status(fleet)
        row = rows.get(f"{GEMMA}/cancelled")
        if row and row["requests"] > before:
            break
        time.sleep(0.2)
    assert row is not None and row["requests"] == before + 1
    t0 = time.monotonic()  # a one-replica model free again at once: nothing runs on
    c.completions.create(model=GEMMA, prompt="Hi", max_tokens=2)
    assert time.monotonic() - t0 < 10


def replica_pids(deployment: str) -> list[int]:
    """The processes of a deployment's live replicas on this machine: Ray titles each
    actor's process ``ray::ServeReplica:<app>:<deployment>``."""
    r = subprocess.run(
        ["pgrep", "-f", f"ServeReplica:tokenmill:{deployment}$"], capture_output=True, text=True
    )
    return [int(pid) for pid in r.stdout.split()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def busiest(pids: list[int]) -> int:
    """The process that used the most CPU time over the next second."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    await asyncio.sleep(1.0)
    return max(pids, key=lambda pid: cpu_seconds(pid) - before[pid])


async def test_a_replica_killed_mid_stream_loses_nothing_else(fleet: Server) -> None:
    deployment = f"model-{MODEL}"
    pids = replica_pids(deployment)
    assert len(pids) == 2
    outcome: list[str] = []
    async with openai.AsyncOpenAI(
        base_url=fleet.base_url, api_key=API_KEY, max_retries=0, timeout=120
    ) as c:

        async def stream(i: int) -> None:
            s = await c.completions.create(
                model=MODEL, prompt=f"Request {i}: write a long story.", max_tokens=300,
                stream=True, logit_bias=NO_EOS,
            )  # fmt: skip
            try:
                async for _ in s:
                    pass
                outcome.append("done")
            except openai.APIError:
                outcome.append("error")

        tasks = [asyncio.create_task(stream(i)) for i in range(6)]
        await asyncio.sleep(3)  # every stream under way
        # The busier replica: the router spreads streams by load, but a replica that was
        # slow to take them (a loaded CI machine) may have none, and killing it tests nothing.
        os.kill(await busiest(pids), signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
    assert "error" in outcome
    # Each lost stream's row ended interrupted; the others finished.
    rows = usage_by_status(fleet)
    assert rows[f"{MODEL}/interrupted"]["requests"] == outcome.count("error")
    # The model keeps serving meanwhile, and Ray Serve starts a replacement.
    official(fleet).completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    deadline = time.monotonic() + 180
    while len(replica_pids(deployment)) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert len(replica_pids(deployment)) == 2


async def test_rate_limits_are_exact_across_two_ingress_replicas(
    fleet: Server, fleet_db: str
) -> None:
    if not os.environ.get(REDIS_ENV):
        pytest.skip(f"{REDIS_ENV} is not set: the ingresses share no rate limits")
    assert len(replica_pids("ingress")) == 2
    secret, _ = new_key(fleet_db, "--project", "acme", "--rpm", "20", "--tpm", "1000000")
    six = {
        f"x-ratelimit-{w}-{u}"
        for w in ("limit", "remaining", "reset")
        for u in ("requests", "tokens")
    }

    async def one(i: int) -> tuple[int, set[str]]:
        # A connection each: Ray Serve's proxy spreads them over the two ingress replicas.
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=120) as h:
            r = await h.post(
                "/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={"model": GEMMA, "prompt": f"{i}", "max_tokens": 1},
            )
            return r.status_code, set(r.headers)

    results = await asyncio.gather(*(one(i) for i in range(50)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 20 + [429] * 30  # exactly the limit, across both ingresses
    assert all(six <= headers for _, headers in results)


def test_ray_needs_nothing_but_the_catalogue(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nname = "a"\nreplicas = "two"\n')
    r = subprocess.run(
        [sys.executable, "-m", "tokenmill", "serve", "--config", str(bad), "--ray"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and "model 'a': 'replicas' must be an integer" in r.stderr
