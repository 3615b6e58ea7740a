"""Prometheus metrics on the fake runner: after a known load every counter and histogram
count equals what the load did; /metrics needs a key unless public; --log-content."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import ADMIN_KEY, MODEL, AppStack
from tests.metrics_text import Scrape


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[AppStack]:
    s = AppStack(tmp_path, max_num_seqs=4)
    s.open()
    try:
        yield s
    finally:
        s.close()


def scrape(stack: AppStack) -> Scrape:
    r = stack.sync_client().get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


def test_counters_and_histograms_equal_the_load(stack: AppStack) -> None:
    c = stack.official()
    prompt = completion = itl = choices = requests = 0
    for i in range(3):  # chat, whole answers, stopped by length
        r = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4 + i
        )
        assert r.usage is not None
        prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
        itl += r.usage.completion_tokens - 1
        choices, requests = choices + 1, requests + 1
    # Streamed, n=2: two choices, one TTFT.
    stream = c.completions.create(
        model=MODEL, prompt="abc", max_tokens=5, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [ch.usage for ch in stream if ch.usage is not None][-1]
    prompt += usage.prompt_tokens
    completion += usage.completion_tokens
    itl += usage.completion_tokens - 2
    choices, requests = choices + 2, requests + 1
    # Refused before admission: counted as such, no latency or tokens.
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])

    m = scrape(stack)
    model = {"model": MODEL}
    assert m.value("tokenmill_prompt_tokens_total", **model) == prompt
    assert m.value("tokenmill_generation_tokens_total", **model) == completion
    assert m.value("tokenmill_prefix_cache_queries_total", **model) == prompt
    # The fake model may sample its end token: stop or length, one per choice.
    assert m.value("tokenmill_request_success_total", **model) == choices
    assert m.value("tokenmill_request_success_total", finished_reason="abort") == 0
    assert m.value("tokenmill_time_to_first_token_seconds_count", **model) == requests
    assert m.value("tokenmill_e2e_request_latency_seconds_count", **model) == requests
    assert m.value("tokenmill_request_queue_time_seconds_count", **model) == requests
    assert m.value("tokenmill_inter_token_latency_seconds_count", **model) == itl
    assert m.value("tokenmill_time_to_first_token_seconds_sum", **model) > 0
    assert (
        m.value(
            "tokenmill_http_requests_total", route="/v1/chat/completions", status="200", **model
        )
        == 3
    )
    assert m.value("tokenmill_http_requests_total", route="/v1/completions", status="200") == 1
    assert m.value("tokenmill_http_requests_total", route="/v1/chat/completions", status="404") == 1
    assert m.value("tokenmill_engine_steps_total", **model) > 0
    assert m.value("tokenmill_requests_running", **model) == 0
    assert m.value("tokenmill_requests_waiting", **model) == 0
    assert 0 <= m.value("tokenmill_kv_cache_usage_ratio", **model) <= 1


def test_a_second_identical_prompt_hits_the_prefix_cache(stack: AppStack) -> None:
    c = stack.official()
    body = {"model": MODEL, "prompt": "the same prompt " * 8, "max_tokens": 2}
    first = c.completions.create(**body)  # type: ignore[call-overload]
    second = c.completions.create(**body)  # type: ignore[call-overload]
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0
    m = scrape(stack)
    assert m.value("tokenmill_prefix_cache_hits_total") == cached
    assert m.value("tokenmill_prefix_cache_queries_total") == (
        first.usage.prompt_tokens + second.usage.prompt_tokens
    )


def test_rate_limited_requests_are_counted(stack: AppStack) -> None:
    stack.keys.create_project("acme")
    key, _ = stack.keys.create_key(["acme"], rpm=1)
    c = stack.official(key)
    c.completions.create(model=MODEL, prompt="a", max_tokens=1)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model=MODEL, prompt="a", max_tokens=1)
    m = scrape(stack)
    assert m.value("tokenmill_rate_limited_total", model=MODEL) == 2
    assert m.value("tokenmill_http_requests_total", status="429") == 2
    assert m.value("tokenmill_e2e_request_latency_seconds_count") == 1


def test_metrics_need_a_key_unless_public(tmp_path: Path) -> None:
    private = AppStack(tmp_path, db_name="a.db")
    public = AppStack(tmp_path, db_name="b.db", metrics_public=True)
    for s in (private, public):
        s.open()
    try:
        r = private.sync_client(headers={}).get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer wrong"}
        assert private.sync_client(headers=wrong).get("/metrics").status_code == 401
        ok = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert private.sync_client(headers=ok).get("/metrics").status_code == 200
        r = public.sync_client(headers={}).get("/metrics")
        assert r.status_code == 200 and "tokenmill_engine_steps_total" in r.text
    finally:
        private.close()
        public.close()
