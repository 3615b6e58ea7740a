"""Watch the server process while the mix runs: resident memory and open file descriptors from
/proc, liveness from ``/health``, and the engine's step counter (it would restart from zero if
the engine were ever rebuilt)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from tokenmill.bench.servers import BENCH_KEY
from tokenmill.bench.soak.server import Served


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the mix started
    rss_kb: int | None  # None once the process is gone
    fds: int | None
    health: int  # the status of GET /health; 0 when it did not answer
    alive: bool
    engine_steps: int | None  # None if /metrics did not say
    host_cache_kb: int = 0  # KV saved in the prefix cache's host tier (bounded by --cache-ram)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def sample(client: httpx.AsyncClient, served: Served, t: float) -> Sample:
    # /proc first: the probes' own connections must not be counted.
    rss, fds = rss_kb(served.pid), open_fds(served.pid)
    alive = served.proc.poll() is None
    health = 0
    steps = None
    host_cache = 0
    try:
        health = (await client.get(f"{served.root}/health")).status_code
        r = await client.get(
            f"{served.root}/metrics", headers={"Authorization": f"Bearer {BENCH_KEY}"}
        )
        if r.status_code == 200:
            steps = metric_sum(r.text, "tokenmill_engine_steps_total")
            host_cache = metric_sum(r.text, "tokenmill_host_cache_bytes") or 0
    except httpx.HTTPError:
        pass
    return Sample(t, rss, fds, health, alive, steps, host_cache // 1024)


def metric_sum(text: str, name: str) -> int | None:
    """The sum of a Prometheus metric's series (one per model) in ``/metrics`` text, or None
    if it has none."""
    values = [
        float(m[1]) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    ]
    return int(sum(values)) if values else None


async def watch(
    served: Served,
    t0: float,
    interval: float,
    samples: list[Sample],
    died: asyncio.Event,
    status: Callable[[], str],
) -> None:
    """Sample every ``interval`` seconds until cancelled; set ``died`` if the process exits."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            s = await sample(client, served, time.monotonic() - t0)
            samples.append(s)
            mb = f"{s.rss_kb / 1024:.0f} MB" if s.rss_kb else "-"
            sys.stderr.write(f"\rsoak {s.t:5.0f} s  RSS {mb}  fds {s.fds}  {status()}   ")
            sys.stderr.flush()
            if not s.alive:
                died.set()
                return
            await asyncio.sleep(interval)


def slope_per_hour(ts: list[float], values: list[float]) -> float | None:
    """The least-squares slope of ``values`` over ``ts`` (seconds), per hour."""
    if len(ts) < 2 or max(ts) == min(ts):
        return None
    return float(np.polyfit(np.array(ts) / 3600.0, np.array(values), 1)[0])
