"""The soak's verdict: one PASS/FAIL per check, as Markdown and JSON."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenmill.bench.soak import figures
from tokenmill.bench.soak.server import LIMITED_RPM, Keys, Served

if TYPE_CHECKING:
    from tokenmill.bench.soak.run import SoakRun

# RSS may grow this much after the warm-up: allocator pools and caches settle slowly. Most of
# the RSS is the model and its KV cache, which do not grow, so the bound is mostly the absolute
# one: a 30-minute run sends ~9,000 requests, and a leak of a few KB each would exceed it.
RSS_TOLERANCE_FRACTION = 0.02
RSS_TOLERANCE_MB = 16.0
# Open descriptors move with the connections in flight (one per client, plus probes), and the
# SQLite pool opens a few lazily; anything beyond that is a leak.
FD_SLACK = 8
RSS, FDS = "RSS flat after warm-up", "open fds flat"


def build(
    soak: SoakRun,
    rows: list[dict[str, str]],
    served: Served,
    keys: Keys,
    duration: float,
    concurrency: int,
    log_path: Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of the run and the checks on them."""
    warmup = min(0.1 * duration, 60.0)
    data: dict[str, Any] = {
        "meta": {
            **meta,
            "machine": f"{platform.machine()}, {_cores()} cores, {platform.platform()}",
            "duration_s": round(soak.elapsed, 1),
            "concurrency": concurrency,
            "sample_interval_s": soak.interval,
            "limited_rpm": LIMITED_RPM,
        },
        "requests": figures.requests(soak.outcomes),
        "process": figures.process(soak.samples, soak.idle, warmup),
        "ledger": figures.ledger(soak.outcomes, rows, keys),
        "server": figures.server(soak.samples, served, log_path),
    }
    data["checks"] = checks(data, duration, concurrency)
    data["verdict"] = "PASS" if all(c["ok"] for c in data["checks"]) else "FAIL"
    return data


def checks(data: dict[str, Any], duration: float, concurrency: int) -> list[dict[str, Any]]:
    return [
        *_request_checks(data["requests"], duration),
        *_process_checks(data["process"], concurrency),
        *_ledger_checks(data["ledger"]),
        *_server_checks(data["server"]),
    ]


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _request_checks(req: dict[str, Any], duration: float) -> list[dict[str, Any]]:
    lim = req["limited"]
    bound = LIMITED_RPM * math.ceil(duration / 60)  # the window is 60 s
    limited_ok = lim["refused_429"] > 0 and lim["without_retry_after"] == 0
    return [
        _check("no 5xx", req["server_errors"] == 0, f"{req['server_errors']} of {req['total']}"),
        _check(
            "every request answered as expected",
            req["failed"] == 0,
            f"{req['failed']} failed (error events, cut streams, wrong statuses, no answer)",
        ),
        _check(
            "rate-limited key held to its RPM",
            limited_ok and 0 < lim["admitted"] <= bound,
            f"{lim['admitted']} admitted (at most {bound}), {lim['refused_429']} got 429, "
            f"{lim['without_retry_after']} without retry-after",
        ),
    ]


def _process_checks(proc: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    rss, fds = proc["rss_mb"], proc["fds"]
    if rss is None:
        return [_check(name, False, "no sample of the process") for name in (RSS, FDS)]
    allowed = max(RSS_TOLERANCE_FRACTION * rss["after_warmup"], RSS_TOLERANCE_MB)
    under_load = fds["max_after_warmup"] - fds["after_warmup"]
    idle = fds["idle_end"]
    fds_ok = under_load <= concurrency + FD_SLACK and idle is not None
    return [
        _check(
            RSS,
            rss["growth_after_warmup"] <= allowed,
            f"{rss['after_warmup']} -> {rss['last']} MB ({rss['growth_after_warmup']:+.1f}, "
            f"allowed +{allowed:.1f}); slope {rss['slope_mb_per_h']} MB/h; not counting "
            f"{rss.get('host_cache_last', 0)} MB of prompt KV in the host cache at the end",
        ),
        _check(
            FDS,
            fds_ok and idle <= fds["after_warmup"] + FD_SLACK,
            f"{fds['after_warmup']} after warm-up, max {fds['max_after_warmup']}, {idle} idle "
            f"at the end (allowed: +{concurrency + FD_SLACK} under load, +{FD_SLACK} idle)",
        ),
    ]


def _ledger_checks(led: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = not led["ids_without_row"] and not led["rows_not_admitted"]
    return [
        _check(
            "ledger rows == admitted",
            led["rows"] == led["admitted"] and by_id,
            f"{led['rows']} rows, {led['admitted']} admitted",
        ),
        _check("no pending rows", led["pending"] == 0, f"{led['pending']} pending or interrupted"),
        _check(
            "ledger matches responses",
            led["status_mismatch_count"] == 0 and led["token_mismatch_count"] == 0,
            f"{led['status_mismatch_count']} status and {led['token_mismatch_count']} token "
            f"mismatches ({led['tokens_compared']} token counts compared)",
        ),
    ]


def _server_checks(srv: dict[str, Any]) -> list[dict[str, Any]]:
    killed = " (killed)" if srv["killed"] else ""
    return [
        _check("zero restarts", srv["restarts"] == 0, f"{srv['restarts']} (pid {srv['pid']})"),
        _check(
            "/health 200 throughout",
            srv["health_failures"] == 0,
            f"{srv['health_failures']} of {srv['health_probes']} probes failed",
        ),
        _check(
            "clean shutdown",
            srv["exit_code"] == 0 and not srv["killed"],
            f"exit code {srv['exit_code']} {srv['stop_s']} s after SIGTERM{killed}",
        ),
    ]


def markdown(data: dict[str, Any]) -> str:
    m, req, proc = data["meta"], data["requests"], data["process"]
    parts = [
        f"## Soak: {data['verdict']}",
        f"`{m['command']}` — {m['time']} — {m['machine']}",
        f"{m['duration_s']} s, {m['concurrency']} clients, a sample every "
        f"{m['sample_interval_s']:g} s after a {proc.get('warmup_s')} s warm-up; server: "
        f"`{m['server']}`",
        "| check | verdict | figures |\n| --- | --- | --- |\n"
        + "\n".join(
            f"| {c['name']} | {'PASS' if c['ok'] else '**FAIL**'} | {c['detail']} |"
            for c in data["checks"]
        ),
        _requests_table(req),
        _process_table(proc),
        _ledger_text(data["ledger"]),
        _server_text(data["server"]),
    ]
    if req["failures"]:
        parts.append("First failures:\n\n" + "\n".join(f"- `{f}`" for f in req["failures"]))
    return "\n\n".join(parts) + "\n"


def _requests_table(req: dict[str, Any]) -> str:
    lines = [
        f"Requests: {req['total']} sent, {req['admitted']} admitted (200).",
        "",
        "| kind | sent | results | statuses | p50 ms | p95 ms | max ms |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for kind, k in req["by_kind"].items():
        results = ", ".join(f"{r} {n}" for r, n in sorted(k["results"].items()))
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(k["statuses"].items()))
        lines.append(
            f"| {kind} | {k['sent']} | {results} | {statuses} | "
            f"{k['latency_p50_ms']} | {k['latency_p95_ms']} | {k['latency_max_ms']} |"
        )
    bad = "; ".join(
        f"{v} " + ", ".join(f"{s}×{n}" for s, n in c.items())
        for v, c in req["bad_variants"].items()
    )
    slowest = ", ".join(
        f"{o['kind']} {o['latency'] * 1000:.0f} ms (sent at {o['sent_at']:.0f} s)"
        for o in req["slowest"]
    )
    lines += ["", f"Bad requests by variant: {bad or 'none'}.", f"Slowest: {slowest or 'none'}."]
    return "\n".join(lines)


def _process_table(proc: dict[str, Any]) -> str:
    rss, fds = proc["rss_mb"], proc["fds"]
    if rss is None:
        return "Server process: never sampled."
    return "\n".join(
        [
            "| server process | first | after warm-up | last | max | trend |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            f"| RSS (MB) | {rss['first']} | {rss['after_warmup']} | {rss['last']} | {rss['max']} "
            f"| {rss['growth_after_warmup']:+.1f} MB after warm-up, "
            f"slope {rss['slope_mb_per_h']} MB/h |",
            f"| open fds | {fds['first']} | {fds['after_warmup']} | {fds['last']} | {fds['max']} "
            f"| {fds['idle_end']} when idle at the end |",
        ]
    )


def _ledger_text(led: dict[str, Any]) -> str:
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(led["by_status"].items()))
    keys = "; ".join(
        f"{k}: {v['rows']} rows / {v['admitted']} admitted" for k, v in led["rows_by_key"].items()
    )
    text = (
        f"Ledger: {led['rows']} rows for {led['admitted']} admitted requests ({statuses}); {keys}."
    )
    for label, key in (
        ("admitted, no row", "ids_without_row"),
        ("row, not seen admitted", "rows_not_admitted"),
        ("status mismatches", "status_mismatches"),
        ("token mismatches", "token_mismatches"),
    ):
        if led[key]:
            text += f"\n\n{label}: " + ", ".join(f"`{x}`" for x in led[key])
    return text


def _server_text(srv: dict[str, Any]) -> str:
    text = (
        f"Server: pid {srv['pid']}, {srv['restarts']} restarts, {srv['engine_steps']} engine "
        f"steps, {srv['health_failures']} failed /health probes of {srv['health_probes']}; "
        f"exit code {srv['exit_code']} {srv['stop_s']} s after SIGTERM; "
        f"{srv['log_problems']} ERROR/Traceback lines in its log."
    )
    if srv["log_examples"]:
        text += "\n\n" + "\n".join(f"    {line}" for line in srv["log_examples"])
    return text


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2))


def _cores() -> int:
    import os

    return os.cpu_count() or 0
