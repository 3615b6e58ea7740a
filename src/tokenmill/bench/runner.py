"""Drive an OpenAI-compatible server with streamed requests at a fixed concurrency."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokenmill.bench.workloads import BenchRequest


@dataclass
class Sample:
    """What one streamed request measured; times are seconds since it was sent."""

    ok: bool
    latency: float
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)  # between content chunks
    output_tokens: int = 0
    error: str | None = None
    text: str = ""  # what was generated (a conversation's next turn resends it)


async def run_one(client: httpx.AsyncClient, base_url: str, req: BenchRequest) -> Sample:
    body = {**req.body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    last = t0
    ttft: float | None = None
    gaps: list[float] = []
    chunks = 0
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", base_url + req.path, json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode("utf-8", "replace")[:200]
                return Sample(False, time.perf_counter() - t0, error=f"{r.status_code}: {text}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data.strip() == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    return Sample(False, time.perf_counter() - t0, error=str(obj["error"])[:200])
                usage = obj.get("usage") or usage
                for ch in obj.get("choices") or ():
                    piece = ch.get("text") or (ch.get("delta") or {}).get("content")
                    if piece:
                        pieces.append(piece)
                        now = time.perf_counter()
                        if ttft is None:
                            ttft = now - t0
                        else:
                            gaps.append(now - last)
                        last = now
                        chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return Sample(False, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    tokens = int(usage["completion_tokens"]) if usage else chunks
    return Sample(True, time.perf_counter() - t0, ttft, gaps, tokens, text="".join(pieces))


async def run_conversation(
    client: httpx.AsyncClient, base_url: str, req: BenchRequest
) -> list[Sample]:
    """The first turn, then each follow-up with the whole history so far; a failed turn
    ends the conversation (its sample says why)."""
    samples = [await run_one(client, base_url, req)]
    messages = list(req.body.get("messages", ()))
    for follow_up in req.follow_ups:
        if not samples[-1].ok:
            break
        messages += [
            {"role": "assistant", "content": samples[-1].text},
            {"role": "user", "content": follow_up},
        ]
        turn = BenchRequest(req.path, {**req.body, "messages": messages})
        samples.append(await run_one(client, base_url, turn))
    return samples


@dataclass
class LevelResult:
    concurrency: int
    wall: float
    samples: list[Sample]


async def run_level(
    base_url: str,
    api_key: str,
    requests: list[BenchRequest],
    concurrency: int,
    label: str,
    duration: float | None = None,
) -> LevelResult:
    """Send ``requests`` with ``concurrency`` clients in flight (or until ``duration`` ends).

    Connections are not reused: one server closing idle keep-alive connections must not turn
    into errors for it alone, so every server gets the same client behaviour.
    """
    pending = list(reversed(requests))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = httpx.Timeout(600.0, connect=30.0)
    t0 = time.perf_counter()
    deadline = t0 + duration if duration else None

    async def worker(client: httpx.AsyncClient) -> None:
        while pending and (deadline is None or time.perf_counter() < deadline):
            samples.extend(await run_conversation(client, base_url, pending.pop()))
            _progress(label, concurrency, len(requests) - len(pending), len(requests))

    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    sys.stderr.write("\n")
    return LevelResult(concurrency, time.perf_counter() - t0, samples)


def _progress(label: str, concurrency: int, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r{label:>14} c={concurrency:<3} [{bar}] {done}/{total}")
    sys.stderr.flush()
