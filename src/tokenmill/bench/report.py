"""Summaries, Markdown tables, JSON and a PNG plot of benchmark results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenmill.bench.runner import LevelResult

COLUMNS = (
    ("concurrency", "conc", "{:d}"),
    ("requests_per_s", "req/s", "{:.2f}"),
    ("output_tokens_per_s", "out tok/s", "{:.1f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p95_ms", "TTFT p95 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("itl_p50_ms", "ITL p50 ms", "{:.1f}"),
    ("itl_p99_ms", "ITL p99 ms", "{:.1f}"),
    ("e2e_p50_ms", "E2E p50 ms", "{:.0f}"),
    ("e2e_p99_ms", "E2E p99 ms", "{:.0f}"),
    ("errors", "errors", "{:d}"),
)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(level: LevelResult) -> dict[str, Any]:
    ok = [s for s in level.samples if s.ok]
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    gaps = [g for s in ok for g in s.gaps]
    lat = [s.latency for s in ok]
    return {
        "concurrency": level.concurrency,
        "requests": len(level.samples),
        "wall_s": level.wall,
        "requests_per_s": len(ok) / level.wall,
        "output_tokens_per_s": sum(s.output_tokens for s in ok) / level.wall,
        "ttft_p50_ms": _pct(ttfts, 50),
        "ttft_p95_ms": _pct(ttfts, 95),
        "ttft_p99_ms": _pct(ttfts, 99),
        "itl_p50_ms": _pct(gaps, 50),
        "itl_p99_ms": _pct(gaps, 99),
        "e2e_p50_ms": _pct(lat, 50),
        "e2e_p99_ms": _pct(lat, 99),
        "errors": len(level.samples) - len(ok),
        "first_errors": [s.error for s in level.samples if not s.ok][:3],
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "| " + " | ".join("---:" for _ in COLUMNS) + " |"
    body = ["| " + " | ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


RATIO_KEYS = (
    ("output_tokens_per_s", "out tok/s (×, higher is better)"),
    ("ttft_p50_ms", "TTFT p50 (×, lower is better)"),
    ("ttft_p99_ms", "TTFT p99 (×, lower is better)"),
    ("itl_p50_ms", "ITL p50 (×, lower is better)"),
)


def ratio_table(ours: list[dict[str, Any]], peer: list[dict[str, Any]]) -> str:
    """tokenmill / peer for each concurrency level both ran."""
    head = "| conc | " + " | ".join(label for _, label in RATIO_KEYS) + " |"
    sep = "| ---: | " + " | ".join("---:" for _ in RATIO_KEYS) + " |"
    by_c = {r["concurrency"]: r for r in peer}
    lines = [head, sep]
    for r in ours:
        p = by_c.get(r["concurrency"])
        if p is None:
            continue
        cells = [f"{r[k] / p[k]:.2f}" if p[k] and p[k] == p[k] else "n/a" for k, _ in RATIO_KEYS]
        lines.append(f"| {r['concurrency']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2))


def plot(path: Path, results: dict[str, dict[str, list[dict[str, Any]]]]) -> bool:
    """Throughput and TTFT p50 against concurrency, one line per server and workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for server, by_workload in results.items():
        for workload, rows in by_workload.items():
            xs = [r["concurrency"] for r in rows]
            label = f"{server} {workload}"
            ax1.plot(xs, [r["output_tokens_per_s"] for r in rows], marker="o", label=label)
            ax2.plot(xs, [r["ttft_p50_ms"] for r in rows], marker="o", label=label)
    for ax, title in ((ax1, "output tokens/s"), (ax2, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
