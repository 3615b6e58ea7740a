"""Run the soak: start the server, drive the mix for the duration while watching the process,
stop the server with SIGTERM, read the ledger back and report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokenmill.bench.servers import ServerSettings, new_port, tokenmill_cmd
from tokenmill.bench.soak import report
from tokenmill.bench.soak.mix import TIMEOUT, Mix, Outcome, send
from tokenmill.bench.soak.probe import Sample, sample, watch
from tokenmill.bench.soak.server import Served, create_keys, ledger_csv, parse_csv, serving

DEFAULT_CONCURRENCY = 6  # the server decodes 8 at a time; bad requests take no slot
IDLE_SETTLE = 2.0  # seconds after the last request before the idle sample


@dataclass
class SoakRun:
    """What the mix saw and what the watcher sampled."""

    outcomes: list[Outcome]
    samples: list[Sample]
    idle: Sample  # after the load stopped: connections closed
    elapsed: float
    interval: float


def run_soak(args: argparse.Namespace, settings: ServerSettings) -> int:
    """The whole soak; 0 if every check passed, 1 if not."""
    concurrency = _concurrency(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tokenmill-soak-") as tmp:
        db = str(Path(tmp) / "soak.db")
        keys = create_keys(db)
        extra = ["--db", db, *shlex.split(args.tokenmill_args)]
        cmd = tokenmill_cmd(settings, new_port(), extra)
        with serving(cmd, out_dir / "server.log") as served:
            start_s = time.monotonic() - t0
            mix = Mix(keys, random.Random(args.seed))
            soak = asyncio.run(drive(served, mix, args.duration, concurrency))
            served.stop()  # the drain finalizes the ledger: read it only after the exit
        ledger = ledger_csv(db)
    (out_dir / "ledger.csv").write_text(ledger)
    meta = {
        "command": "tokenmill " + shlex.join(sys.argv[1:]),
        "server": shlex.join(cmd[1:]),
        "time": time.strftime("%F %T"),
        "start_s": round(start_s, 1),
    }
    data = report.build(soak, parse_csv(ledger), served, keys, args.duration, concurrency,
                        out_dir / "server.log", meta)  # fmt: skip
    text = report.markdown(data)
    print(text)
    (out_dir / "soak.md").write_text(text)
    report.write_json(out_dir / "soak.json", data)
    print(f"wrote {out_dir}/soak.md, soak.json, ledger.csv and server.log", file=sys.stderr)
    return 0 if data["verdict"] == "PASS" else 1


def _concurrency(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        raise SystemExit("tokenmill bench --soak needs --duration SECONDS")
    try:
        return int(args.concurrency or DEFAULT_CONCURRENCY)
    except ValueError:
        raise SystemExit("tokenmill bench --soak takes one --concurrency level") from None


def sample_interval(duration: float) -> float:
    """About 120 samples a run, between one a second and one every 10 seconds."""
    return min(10.0, max(1.0, duration / 120))


async def drive(served: Served, mix: Mix, duration: float, concurrency: int) -> SoakRun:
    """``concurrency`` clients walk the mix until ``duration`` ends (or the server dies)."""
    outcomes: list[Outcome] = []
    samples: list[Sample] = []
    died = asyncio.Event()
    interval = sample_interval(duration)
    t0 = time.monotonic()
    deadline = t0 + duration

    def status() -> str:
        results = Counter(o.result for o in outcomes)
        return f"{len(outcomes)} requests " + " ".join(f"{k} {v}" for k, v in results.items())

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client:

        async def worker() -> None:
            while (now := time.monotonic()) < deadline and not died.is_set():
                outcome = await send(client, served.root, mix.next())
                outcome.sent_at = now - t0
                outcomes.append(outcome)

        watcher = asyncio.create_task(watch(served, t0, interval, samples, died, status))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    sys.stderr.write("\n")
    await asyncio.sleep(IDLE_SETTLE)
    async with httpx.AsyncClient(timeout=5.0) as probe_client:
        idle = await sample(probe_client, served, time.monotonic() - t0)
    return SoakRun(outcomes, samples, idle, elapsed, interval)
