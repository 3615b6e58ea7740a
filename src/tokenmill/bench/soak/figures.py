"""The soak's figures, from what the mix saw, what the watcher sampled and the ledger rows."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.bench.soak.mix import CANCELLED, COMPLETED, CYCLE, GOOD, Outcome
from tokenmill.bench.soak.probe import Sample, slope_per_hour
from tokenmill.bench.soak.server import Keys, Served

# The ledger status each client-side outcome allows. A stream the client closed may still be
# ``finished``: the server can have sent its last chunk before it saw the connection go.
ROW_STATUS = {COMPLETED: {"finished"}, CANCELLED: {"cancelled", "finished"}}
_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
EXAMPLES = 5  # of each kind of problem, in the report
KINDS = tuple(dict.fromkeys(CYCLE))


def requests(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by kind, result and status; the bad requests by variant; the rate-limited key;
    the slowest requests and the first failures."""
    variants: dict[str, Counter[str]] = {}
    for o in outcomes:
        if o.kind == "bad":
            variants.setdefault(o.variant, Counter())[str(o.status)] += 1
    limited = [o for o in outcomes if o.kind == "limited"]
    refused = [o for o in limited if o.status == 429]
    slowest = sorted(outcomes, key=lambda o: -o.latency)[:EXAMPLES]
    return {
        "total": len(outcomes),
        "admitted": sum(o.status == 200 for o in outcomes),
        "server_errors": sum(o.status is not None and o.status >= 500 for o in outcomes),
        "failed": sum(o.result not in GOOD for o in outcomes),
        "by_kind": {kind: _kind([o for o in outcomes if o.kind == kind]) for kind in KINDS},
        "bad_variants": {v: dict(c) for v, c in variants.items()},
        "limited": {
            "sent": len(limited),
            "admitted": sum(o.status == 200 for o in limited),
            "refused_429": len(refused),
            "without_retry_after": sum(not o.retry_after for o in refused),
        },
        "slowest": [_example(o, "sent_at", "latency", "response_id") for o in slowest],
        "failures": [
            _example(o, "status", "result", "detail") for o in outcomes if o.result not in GOOD
        ][:EXAMPLES],
    }


def _kind(mine: list[Outcome]) -> dict[str, Any]:
    ms = [o.latency * 1000 for o in mine] or [float("nan")]
    return {
        "sent": len(mine),
        "results": dict(Counter(o.result for o in mine)),
        "statuses": dict(Counter(str(o.status) for o in mine)),
        "latency_p50_ms": round(float(np.percentile(ms, 50))) if mine else None,
        "latency_p95_ms": round(float(np.percentile(ms, 95))) if mine else None,
        "latency_max_ms": round(max(ms)) if mine else None,
    }


def _example(o: Outcome, *fields: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": o.kind, "variant": o.variant}
    for name in fields:
        value = getattr(o, name)
        out[name] = round(value, 3) if isinstance(value, float) else value
    return out


def process(samples: list[Sample], idle: Sample, warmup: float) -> dict[str, Any]:
    """RSS (MB) and open descriptors: first, after the warm-up, last, max, and the RSS slope.

    The RSS figures leave out the KV saved in the prefix cache's host tier: it is meant to fill
    up to ``--cache-ram`` and then stay there, so what must stay flat is the rest.
    """
    live = [s for s in samples if s.rss_kb is not None and s.fds is not None]
    if not live:
        return {"rss_mb": None, "fds": None}
    warm = [s for s in live if s.t >= warmup] or live[-1:]
    mb = [(s.rss_kb - s.host_cache_kb) / 1024 for s in live if s.rss_kb is not None]
    warm_mb = [(s.rss_kb - s.host_cache_kb) / 1024 for s in warm if s.rss_kb is not None]
    fds = [s.fds for s in live if s.fds is not None]
    warm_fds = [s.fds for s in warm if s.fds is not None]
    slope = slope_per_hour([s.t for s in warm], warm_mb)
    return {
        "rss_mb": {
            "first": round(mb[0], 1),
            "after_warmup": round(warm_mb[0], 1),
            "last": round(mb[-1], 1),
            "max": round(max(mb), 1),
            "growth_after_warmup": round(warm_mb[-1] - warm_mb[0], 1),
            "slope_mb_per_h": None if slope is None else round(slope, 1),
            "host_cache_last": round(live[-1].host_cache_kb / 1024, 1),
        },
        "fds": {
            "first": fds[0],
            "after_warmup": warm_fds[0],
            "last": fds[-1],
            "max": max(fds),
            "max_after_warmup": max(warm_fds),
            "idle_end": idle.fds,
        },
        "samples": len(live),
        "warmup_s": round(warmup, 1),
        # [seconds, RSS MB, open fds, engine steps] for whoever wants to plot or refit them
        "series": [
            [round(s.t, 1), round((s.rss_kb or 0) / 1024, 1), s.fds, s.engine_steps] for s in live
        ],
    }


def ledger(outcomes: list[Outcome], rows: list[dict[str, str]], keys: Keys) -> dict[str, Any]:
    """Rows against the requests the server admitted (status 200), by id where the id is known,
    and each row's status and token counts against what the client was answered."""
    admitted = [o for o in outcomes if o.status == 200]
    by_id = {r["request_id"]: r for r in rows}
    seen = {o.response_id for o in admitted if o.response_id}
    status_mismatch, token_mismatch = [], []
    for o in admitted:
        row = by_id.get(o.response_id or "")
        if row is None:
            continue
        allowed = ROW_STATUS.get(o.result)
        if allowed is not None and row["status"] not in allowed:
            status_mismatch.append(f"{o.response_id}: {o.result} but row {row['status']}")
        if o.result == COMPLETED and o.usage:
            in_row = {k: int(row[k]) for k in o.usage}
            if in_row != o.usage:
                token_mismatch.append(f"{o.response_id}: response {o.usage}, row {in_row}")
    limited_admitted = sum(o.kind == "limited" for o in admitted)
    return {
        "rows": len(rows),
        "admitted": len(admitted),
        "by_status": dict(Counter(r["status"] for r in rows)),
        "pending": sum(r["status"] in ("pending", "interrupted") for r in rows),
        "rows_by_key": {
            "normal": {
                "rows": sum(r["key"] == keys.normal.key_id for r in rows),
                "admitted": len(admitted) - limited_admitted,
            },
            "limited": {
                "rows": sum(r["key"] == keys.limited.key_id for r in rows),
                "admitted": limited_admitted,
            },
        },
        "admitted_without_id": len(admitted) - len(seen),
        "ids_without_row": sorted(seen - by_id.keys())[:EXAMPLES],
        "rows_not_admitted": sorted(by_id.keys() - seen)[:EXAMPLES],
        "status_mismatches": status_mismatch[:EXAMPLES],
        "status_mismatch_count": len(status_mismatch),
        "token_mismatches": token_mismatch[:EXAMPLES],
        "token_mismatch_count": len(token_mismatch),
        "tokens_compared": sum(o.result == COMPLETED and bool(o.usage) for o in admitted),
    }


def server(samples: list[Sample], served: Served, log_path: Path) -> dict[str, Any]:
    """The process: restarts (exits, or the engine's step counter going back), failed
    health probes, how it stopped, and the problems its log names."""
    steps = [s.engine_steps for s in samples if s.engine_steps is not None]
    went_back = sum(b < a for a, b in itertools.pairwise(steps))
    exits = sum(not s.alive for s in samples)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    problems = [line for line in text.splitlines() if _LOG_PROBLEM.search(line)]
    return {
        "pid": served.pid,
        "restarts": exits + went_back,
        "exited_during_run": exits > 0,
        "engine_steps": steps[-1] if steps else None,
        "health_failures": sum(s.health != 200 for s in samples),
        "health_probes": len(samples),
        "exit_code": served.exit_code,
        "stop_s": None if served.stop_seconds is None else round(served.stop_seconds, 2),
        "killed": served.killed,
        "log_problems": len(problems),
        "log_examples": problems[:EXAMPLES],
    }
