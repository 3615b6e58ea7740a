"""Prometheus metrics of the real server: after a known load (streamed and whole, chat and
completions, n=2, a bad request) every counter and histogram count equals what it did."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server
from tests.metrics_text import Scrape


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--metrics-public")
    yield s
    stop_server(s)


def scrape(server: Server) -> Scrape:
    r = httpx.get(f"{server.root}/metrics", timeout=10)  # public: no key
    assert r.status_code == 200, r.text
    return Scrape(r.text)


async def _load(server: Server) -> dict[str, int]:
    """Three streamed chats at once, two whole completions (one with n=2), one 400."""
    c = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)

    async def chat(i: int) -> openai.types.CompletionUsage:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Name a fruit that starts with {'abc'[i]}."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        return usage

    usages = list(await asyncio.gather(*(chat(i) for i in range(3))))
    choices = [1, 1, 1]
    for n in (1, 2):
        r = await c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=9, n=n)
        assert r.usage is not None
        usages.append(r.usage)
        choices.append(n)
    with pytest.raises(openai.BadRequestError):
        await c.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    await c.close()
    cached = [
        u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0 for u in usages
    ]
    return {
        "requests": len(usages),
        "choices": sum(choices),
        "prompt": sum(u.prompt_tokens for u in usages),
        "cached": sum(c or 0 for c in cached),
        "completion": sum(u.completion_tokens for u in usages),
        "itl": sum(u.completion_tokens for u in usages) - sum(choices),
    }


def test_counters_and_histogram_counts_equal_the_load(server: Server) -> None:
    before = scrape(server)
    assert before.value("tokenmill_requests_running", model=MODEL) == 0
    did = asyncio.run(_load(server))
    m = scrape(server)
    model = {"model": MODEL}

    def grew(name: str, **labels: str) -> float:
        return m.value(name, **labels) - before.value(name, **labels)

    assert grew("tokenmill_prompt_tokens_total", **model) == did["prompt"]
    assert grew("tokenmill_generation_tokens_total", **model) == did["completion"]
    assert grew("tokenmill_prefix_cache_queries_total", **model) == did["prompt"]
    assert grew("tokenmill_prefix_cache_hits_total", **model) == did["cached"]
    assert grew("tokenmill_request_success_total", **model) == did["choices"]
    for hist in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert grew(f"tokenmill_{hist}_seconds_count", **model) == did["requests"], hist
    assert grew("tokenmill_inter_token_latency_seconds_count", **model) == did["itl"]
    ttft, e2e = (
        grew(f"tokenmill_{h}_seconds_sum", **model)
        for h in ("time_to_first_token", "e2e_request_latency")
    )
    assert 0 < ttft < e2e
    assert grew("tokenmill_http_requests_total", route="/v1/chat/completions", status="200") == 3
    assert grew("tokenmill_http_requests_total", route="/v1/completions", status="200") == 2
    assert grew("tokenmill_http_requests_total", route="/v1/completions", status="400") == 1
    assert grew("tokenmill_engine_steps_total", **model) > 0
    assert m.value("tokenmill_requests_running", **model) == 0
    assert m.value("tokenmill_requests_waiting", **model) == 0
    assert 0 <= m.value("tokenmill_kv_cache_usage_ratio", **model) <= 1


def test_gauges_show_a_running_request(server: Server) -> None:
    c = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell a long story."}],
        max_tokens=200, stream=True,
    )  # fmt: skip
    next(iter(stream))  # the request runs now
    m = scrape(server)
    stream.close()
    assert m.value("tokenmill_requests_running", model=MODEL) == 1
    assert m.value("tokenmill_kv_cache_usage_ratio", model=MODEL) > 0


def test_metrics_need_the_key_without_metrics_public() -> None:
    s = start_server("--api-key", API_KEY)
    try:
        assert httpx.get(f"{s.root}/metrics", timeout=10).status_code == 401
        r = httpx.get(f"{s.root}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200 and "tokenmill_time_to_first_token_seconds" in r.text
    finally:
        stop_server(s)
