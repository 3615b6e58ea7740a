"""Chat parameters whose effect is the response's shape (n, lengths, logprobs, tiers, the
accepted-and-harmless fields, content parts, extra_body), each against a baseline so an
ignored one fails; in-process on the fake runner (tests/harness.py) through the official
client. What the real model's distribution decides (temperature, the sampling filters,
penalties, logit_bias, seeds, stop strings) stays in tests/e2e/test_chat_params.py."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from tests.chat import assert_greedy_logprobs, text, user
from tests.harness import MODEL, AppStack

STORY = "write a long story about a dog."
HOT = {"temperature": 1.5, "seed": 1}
N_TOK = 12


def chat(client: openai.OpenAI, prompt: str = STORY, **kw: Any) -> Any:
    kw.setdefault("max_tokens", N_TOK)
    return client.chat.completions.create(model=MODEL, messages=user(prompt), **kw)


@pytest.fixture(scope="module")
def greedy(client: openai.OpenAI) -> str:
    return text(chat(client, temperature=0))


def test_n_three_sampled_choices_with_their_own_logprobs(client: openai.OpenAI) -> None:
    r = chat(client, n=3, temperature=2.0, seed=5, max_tokens=6, logprobs=True)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    for c in r.choices:
        assert c.finish_reason == "length" and len(c.logprobs.content) == 6
        assert "".join(e.token for e in c.logprobs.content) == c.message.content
    assert r.usage.completion_tokens == 18


def test_n_greedy_choices_are_the_greedy_answer(client: openai.OpenAI, greedy: str) -> None:
    r = chat(client, n=2, temperature=0, max_tokens=5)
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.finish_reason == "length"
        assert c.message.content == greedy[:5]  # the fake's tokens are one character each
    assert r.usage.completion_tokens == 10


def test_no_stop_means_no_stop_reason(client: openai.OpenAI) -> None:
    c = chat(client, temperature=0, max_tokens=4).choices[0]
    assert c.finish_reason == "length"
    assert c.model_extra.get("stop_reason") is None


@pytest.mark.parametrize("limit", [3, 7])
def test_max_tokens(client: openai.OpenAI, limit: int) -> None:
    r = chat(client, temperature=0, max_tokens=limit)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == limit


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=user(STORY), temperature=0, max_completion_tokens=5
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    r = chat(client, temperature=0, max_tokens=9, max_completion_tokens=4)
    assert r.usage.completion_tokens == 4


def test_logprobs_and_top_logprobs(client: openai.OpenAI, greedy: str) -> None:
    assert chat(client, temperature=0).choices[0].logprobs is None
    r = chat(client, temperature=0, logprobs=True, top_logprobs=3)
    assert_greedy_logprobs(r, greedy, N_TOK, 3)


@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_top_logprobs_count_follows_request(client: openai.OpenAI, k: int) -> None:
    r = chat(client, temperature=0, max_tokens=3, logprobs=True, top_logprobs=k)
    assert all(len(e.top_logprobs) == k for e in r.choices[0].logprobs.content)


def test_user_and_project_are_accepted_and_change_nothing(
    client: openai.OpenAI, greedy: str
) -> None:
    assert text(chat(client, temperature=0, user="user-1234")) == greedy
    assert text(chat(client, temperature=0, extra_query={"ai_project_id": "proj-1"})) == greedy


@pytest.mark.parametrize(
    ("tier", "expected"),
    [(None, "default"), ("auto", "default"), ("default", "default"),
     ("over-limit", "over-limit"), ("flex", "flex"), ("no-limit", "no-limit")],
)  # fmt: skip
def test_service_tier_is_echoed(client: openai.OpenAI, tier: str | None, expected: str) -> None:
    kw: dict[str, Any] = {} if tier is None else {"service_tier": tier}
    r = chat(client, temperature=0, max_tokens=1, **kw)
    assert r.service_tier == expected
    assert r.choices[0].message.content


def test_content_as_text_parts_equals_a_string(client: openai.OpenAI, greedy: str) -> None:
    half = len(STORY) // 2
    parts = [{"type": "text", "text": STORY[:half]}, {"type": "text", "text": STORY[half:]}]
    r = chat(client, parts, temperature=0)  # type: ignore[arg-type]
    assert text(r) == greedy
    base = chat(client, temperature=0, max_tokens=1)
    assert r.usage.prompt_tokens == base.usage.prompt_tokens


def test_a_literal_extra_body_field_is_merged(stack: AppStack, greedy: str) -> None:
    """Clients that post ``extra_body`` as JSON (not the SDK's keyword) get its fields."""
    http: TestClient = stack.sync_client()
    body = {"model": MODEL, "messages": user(STORY), "max_tokens": N_TOK, **HOT}
    plain = http.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200, plain.text
    hot = plain.json()["choices"][0]["message"]["content"]
    assert hot != greedy
    merged = http.post("/v1/chat/completions", json={**body, "extra_body": {"top_k": 1}})
    assert merged.status_code == 200, merged.text
    assert merged.json()["choices"][0]["message"]["content"] == greedy
