"""``tokenmill bench``: load-test one server, or tokenmill against llama-server side by side."""

from __future__ import annotations

import argparse
import asyncio
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tokenmill.bench import report
from tokenmill.bench.runner import run_level
from tokenmill.bench.servers import (
    BENCH_KEY,
    ServerSettings,
    llama_server_cmd,
    new_port,
    running,
    tokenmill_cmd,
)
from tokenmill.bench.workloads import NAMES, make_requests

DEFAULT_PEER = "benchmarks/.cache/llama-server"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark an OpenAI-compatible server (or compare two)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none")
    p.add_argument("--model", help="model name to send (default: the server's first model)")
    p.add_argument("--workload", default="chat", help=f"comma list of {', '.join(NAMES)}")
    p.add_argument(
        "--concurrency", help="comma list of levels (default 1,4,16,32; with --soak: one, 6)"
    )
    p.add_argument("--requests", type=int, default=0, help="per level (default 4×c, min 16)")
    p.add_argument(
        "--duration",
        type=float,
        default=0,
        help="seconds per level (optional cap); with --soak, the length of the run",
    )
    p.add_argument("--max-tokens", type=int, default=0, help="default depends on the workload")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results")
    p.add_argument(
        "--compare", action="store_true", help="tokenmill against llama-server, level by level"
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="start tokenmill and run a mixed load for --duration seconds, checking memory, "
        "file descriptors, restarts and the usage ledger (docs/reliability.md)",
    )
    p.add_argument("--peer-binary", default=DEFAULT_PEER)
    p.add_argument(
        "--model-path", help="GGUF for --compare and --soak (default: the embedded model)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--ctx-size", type=int, default=4096, help="per sequence, for --compare and --soak"
    )
    p.add_argument(
        "--slots", type=int, default=8, help="parallel sequences, for --compare and --soak"
    )
    p.add_argument(
        "--tokenmill-args",
        default="",
        help="extra `tokenmill serve` flags for --compare and --soak, "
        'e.g. --tokenmill-args="--deterministic"',
    )


def _levels(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in (args.concurrency or "1,4,16,32").split(",") if x.strip()]


def _workloads(args: argparse.Namespace) -> list[str]:
    names = [w.strip() for w in args.workload.split(",") if w.strip()]
    for w in names:
        if w not in NAMES:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(NAMES)}")
    return names


def bench_servers(
    targets: dict[str, str], api_key: str, model: str, args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every workload at every concurrency level against each server (label → base URL).

    With several servers, each level runs on all of them back to back, in an order that
    alternates from level to level, so a machine that speeds up or slows down during the run
    (shared VMs drift by 10-30% over minutes) biases no server: the ratios compare runs made
    within seconds of each other. Idle servers cost nothing while another one is measured.
    """
    labels = list(targets)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {label: {} for label in labels}
    for w in _workloads(args):
        # Warm-up: first requests pay for page faults and graph allocation.
        warm = make_requests(w, model, 2, args.max_tokens or None, args.seed + 999)
        for label in labels:
            asyncio.run(run_level(targets[label], api_key, warm, 1, f"{label} warmup"))
            out[label][w] = []
        for i, c in enumerate(_levels(args)):
            n = args.requests or max(16, 4 * c)
            reqs = make_requests(w, model, n, args.max_tokens or None, args.seed + c)
            for label in labels if i % 2 == 0 else labels[::-1]:
                level = asyncio.run(
                    run_level(
                        targets[label], api_key, reqs, c, f"{label} {w}", args.duration or None
                    )
                )
                out[label][w].append(report.summarize(level))
    return out


def _first_model(base_url: str, api_key: str) -> str:
    r = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def run(args: argparse.Namespace) -> int:
    if args.soak:
        from tokenmill.bench.soak.run import run_soak

        return run_soak(args, _settings(args))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, Any]]]]
    meta: dict[str, Any] = {
        "command": "tokenmill "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {_cpu_count()} cores, {platform.platform()}",
    }
    if args.compare:
        settings = _settings(args)
        meta["settings"] = settings.__dict__
        if not Path(args.peer_binary).exists():
            raise SystemExit(
                f"peer binary {args.peer_binary} not found: run benchmarks/build_llama_server.sh"
            )
        peer_cmd = llama_server_cmd(args.peer_binary, settings, new_port())
        ours_cmd = tokenmill_cmd(settings, new_port(), shlex.split(args.tokenmill_args))
        meta["tokenmill_cmd"] = " ".join(ours_cmd[1:])
        with (
            running(ours_cmd, "tokenmill") as ours,
            running(peer_cmd, "llama-server") as peer,
        ):
            targets = {"tokenmill": ours, "llama-server": peer}
            results = bench_servers(targets, BENCH_KEY, "bench-model", args)
    else:
        model = args.model or _first_model(args.base_url, args.api_key)
        results = bench_servers({"server": args.base_url}, args.api_key, model, args)
    text = _render(results, meta)
    print(text)
    (out_dir / "results.md").write_text(text)
    report.write_json(out_dir / "results.json", {"meta": meta, "results": results})
    if report.plot(out_dir / "results.png", results):
        print(f"\nwrote {out_dir}/results.md, results.json and results.png")
    return 0


def _settings(args: argparse.Namespace) -> ServerSettings:
    path = args.model_path
    if not path:
        from tokenmill.config import embedded_model_path

        path = str(embedded_model_path())
    return ServerSettings(path, args.threads, args.ctx_size, args.slots)


def _render(results: dict[str, dict[str, list[dict[str, Any]]]], meta: dict[str, Any]) -> str:
    parts = [f"`{meta['command']}` — {meta['time']} — {meta['machine']}"]
    if "settings" in meta:
        parts.append(f"settings: {meta['settings']}")
    workloads = sorted({w for by_w in results.values() for w in by_w})
    for w in workloads:
        for server, by_w in results.items():
            if w in by_w:
                parts.append(f"\n### {w} — {server}\n\n{report.markdown_table(by_w[w])}")
        if "tokenmill" in results and "llama-server" in results:
            ratios = report.ratio_table(results["tokenmill"][w], results["llama-server"][w])
            parts.append(f"\n### {w} — tokenmill / llama-server\n\n{ratios}")
    return "\n".join(parts) + "\n"


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0
