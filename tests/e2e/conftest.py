"""Start the real ``tokenmill serve`` on the embedded model once per test session."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from typing import IO

import httpx
import openai
import pytest

from tokenmill.bench.soak.probe import metric_sum

API_KEY = "tm-test-key"
MODEL = "smollm2-135m-instruct"
ALIAS = "meta-llama/Meta-Llama-3.1-70B-Instruct"


@dataclass
class Server:
    base_url: str  # ends in /v1
    root: str
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)  # what it printed (logs), as it comes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(*extra: str, env: dict[str, str] | None = None, timeout: float = 120) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "tokenmill", "serve", "--port", str(port), *extra]
    env = {**os.environ, **(env or {})}
    if "--db" not in extra and "TOKENMILL_DB" not in env:
        # Each server its own fresh database, never the user's.
        env["TOKENMILL_DB"] = os.path.join(tempfile.mkdtemp(prefix="tokenmill-test-"), "t.db")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.time() + timeout
    assert proc.stdout is not None
    lines: list[str] = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("tokenmill ready"):
            # Keep draining output so the server never blocks on a full pipe.
            import threading

            root = f"http://127.0.0.1:{port}"
            server = Server(f"{root}/v1", root, proc, lines)

            def drain(out: IO[str]) -> None:
                for more in out:
                    lines.append(more)

            threading.Thread(target=drain, args=(proc.stdout,), daemon=True).start()
            return server
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def stop_server(server: Server, timeout: float = 15) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()


def engine_steps(root: str, key: str = API_KEY) -> int:
    """The engine's lifetime step count, from ``/metrics``."""
    r = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    steps = metric_sum(r.text, "tokenmill_engine_steps_total")
    assert steps is not None, f"no step counter in /metrics: {r.text[:200]}"
    return steps


async def engine_goes_idle(root: str, within: float) -> None:
    """Wait until the engine stops stepping (no sequence left running), at most ``within``
    seconds; a sequence nobody aborted would keep it stepping far longer."""
    deadline = time.monotonic() + within
    last = await asyncio.to_thread(engine_steps, root)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await asyncio.to_thread(engine_steps, root)
        if now == last:
            return
        last = now
    raise AssertionError(f"the engine was still stepping after {within:g}s")


# Each test's reports by phase ("setup", "call", "teardown"), for fixtures that act on a
# failure (the browser tests' screenshots, tests/e2e/test_pages.py).
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--model-alias", ALIAS, "--max-num-seqs", "8")
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def deterministic_server() -> Iterator[Server]:
    """The same server with ``--deterministic``: for the tests that need outputs bit-identical
    however requests are batched (the default kernels round by batch shape)."""
    s = start_server(
        "--api-key", API_KEY, "--model-alias", ALIAS, "--max-num-seqs", "8", "--deterministic"
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
async def aclient(
    server: Server, request: pytest.FixtureRequest
) -> AsyncIterator[openai.AsyncOpenAI]:
    """Per test: each async test runs on its own event loop, and pooled connections of a
    closed loop cannot be reused. A module may set ``CLIENT_TIMEOUT`` (seconds)."""
    timeout = getattr(request.module, "CLIENT_TIMEOUT", 120)
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=timeout
    ) as c:
        yield c


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.root, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c
