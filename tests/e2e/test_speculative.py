"""Prompt-lookup speculative decoding on the real model: fewer passes, the same output
(bit-identical with ``--deterministic``; with the default kernels, which round a drafted
chunk differently from single tokens, the same within the measured tolerance)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server
from tests.e2e.test_kernels import TOLERANCE, agreement

CODE = """def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
"""
PROMPTS = [
    CODE,
    "Copy this list exactly: apple, banana, cherry, apple, banana, cherry, apple, banana,",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the",
]


@pytest.fixture(scope="module")
def spec() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--spec-tokens", "5", "--deterministic")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def fast_spec() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--spec-tokens", "5")
    yield s
    stop_server(s)


def counters(server: Server) -> dict[str, int]:
    text = httpx.get(f"{server.root}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    return {
        m[1]: int(float(m[2]))
        for m in re.finditer(r"^tokenmill_(\w+)_total(?:{[^}]*})? ([\d.e+]+)$", text, re.M)
    }


def complete(server: Server, prompt: str, **kw: object) -> tuple[str, list[float] | None]:
    c = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0, **kw)  # type: ignore[call-overload]
    lp = r.choices[0].logprobs
    return r.choices[0].text, (lp.token_logprobs if lp else None)


def test_speculation_gives_the_same_text_and_logprobs(
    deterministic_server: Server, spec: Server
) -> None:
    before = counters(spec)
    for prompt in PROMPTS:
        expected = complete(deterministic_server, prompt, logprobs=1)
        assert complete(spec, prompt, logprobs=1) == expected
    after = counters(spec)
    accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert accepted > 20  # the drafts were used, not just proposed
    # Fewer engine passes than tokens: 4 prompts x 48 tokens, each would take a step.
    assert after["engine_steps"] - before["engine_steps"] < 4 * 48 - accepted // 2


def tokens_and_logprobs(server: Server, prompt: str) -> tuple[list[str], list[float]]:
    c = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    return lp.tokens, lp.token_logprobs


def test_default_kernels_accept_drafts_and_agree_within_the_tolerance(
    server: Server, fast_spec: Server
) -> None:
    before = counters(fast_spec)
    found = [
        agreement(tokens_and_logprobs(fast_spec, p), tokens_and_logprobs(server, p))
        for p in PROMPTS
    ]
    accepted = counters(fast_spec)["spec_accepted_tokens"] - before["spec_accepted_tokens"]
    assert accepted > 20, accepted  # the drafts were used
    assert sum(shared for shared, _ in found) >= 0.5 * 48 * len(PROMPTS), found
    assert max(gap for _, gap in found) <= TOLERANCE, found


def test_seeded_sampling_is_unchanged_by_speculation(
    deterministic_server: Server, spec: Server
) -> None:
    server = deterministic_server
    for prompt in PROMPTS[:2]:
        kw = {"temperature": 0.7, "seed": 11}
        c1 = openai.OpenAI(base_url=spec.base_url, api_key=API_KEY, max_retries=0)
        c0 = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        a = c1.completions.create(model=MODEL, prompt=prompt, max_tokens=40, **kw)  # type: ignore[arg-type]
        b = c0.completions.create(model=MODEL, prompt=prompt, max_tokens=40, **kw)  # type: ignore[arg-type]
        assert a.choices[0].text == b.choices[0].text


def test_metrics_need_a_key(spec: Server) -> None:
    assert httpx.get(f"{spec.root}/metrics").status_code == 401
