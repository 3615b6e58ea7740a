"""Every chat parameter the real model's distribution decides, each against a baseline, so a
parameter the server ignores fails: temperature, the sampling filters, penalties, logit_bias,
seeds, n, stop strings, logprobs and prompt logprobs of real tokens, the roles' rendering.
Parameters whose effect is the response's shape are tested in-process:
tests/unit/test_chat_http.py.

Greedy (temperature 0) is deterministic on the embedded model; sampled runs use a seed.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.chat import assert_greedy_logprobs, text
from tests.e2e.conftest import MODEL
from tests.e2e.helpers import user

STORY = "Write a long story about a dog."
REPEAT = "Repeat the word 'cat' 50 times."
HOT = {"temperature": 1.5, "seed": 1}
N_TOK = 12  # short generations keep the suite fast


def chat(client: openai.OpenAI, prompt: str = STORY, **kw: Any) -> Any:
    kw.setdefault("max_tokens", N_TOK)
    return client.chat.completions.create(model=MODEL, messages=user(prompt), **kw)


def extra(obj: Any, name: str) -> Any:
    """A field the openai types do not declare (``stop_reason``, ``prompt_logprobs``)."""
    extras = obj.model_extra or {}
    assert name in extras, f"response has no {name!r}: {obj}"
    return extras[name]


def content_token_ids(client: openai.OpenAI, content: str) -> list[tuple[int, str]]:
    """Token ids of ``content`` as the server tokenizes it inside a user message.

    Uses ``prompt_logprobs=0``: each prompt position then holds only the actual token.
    """
    r = client.chat.completions.create(
        model=MODEL,
        messages=user(content),
        max_tokens=1,
        temperature=0,
        extra_body={"prompt_logprobs": 0},
    )
    entries = extra(r, "prompt_logprobs")
    toks: list[tuple[int, str]] = []
    for e in entries[1:]:
        assert e is not None and len(e) == 1, e
        ((tid, info),) = e.items()
        toks.append((int(tid), info["decoded_token"]))
    decoded = [t for _, t in toks]
    # ... <|im_start|> user \n CONTENT <|im_end|> \n <|im_start|> assistant \n
    start = len(decoded) - 1 - decoded[::-1].index("user") + 2
    end = start + decoded[start:].index("<|im_end|>")
    ids = toks[start:end]
    assert "".join(t for _, t in ids) == content, ids
    return ids


def single_token_id(client: openai.OpenAI, piece: str) -> int:
    ids = content_token_ids(client, piece)
    assert len(ids) == 1, f"{piece!r} is not one token: {ids}"
    return ids[0][0]


@pytest.fixture(scope="module")
def greedy(client: openai.OpenAI) -> str:
    return text(chat(client, temperature=0))


@pytest.fixture(scope="module")
def hot(client: openai.OpenAI, greedy: str) -> str:
    out = text(chat(client, **HOT))
    assert out != greedy, "temperature 1.5 sampling should not reproduce greedy output"
    return out


@pytest.fixture(scope="module")
def greedy_repeat(client: openai.OpenAI) -> str:
    return text(chat(client, REPEAT, temperature=0))


# -- temperature and the sampling filters ----------------------------------------------------


def test_temperature_zero_is_deterministic_and_high_temperature_samples(
    client: openai.OpenAI, greedy: str
) -> None:
    outs = {text(chat(client, temperature=0)) for _ in range(2)}
    assert outs == {greedy}
    sampled = text(chat(client, temperature=1.5, seed=11))
    assert sampled != greedy


def test_top_p_tiny_is_greedy(client: openai.OpenAI, greedy: str, hot: str) -> None:
    assert text(chat(client, top_p=0.01, **HOT)) == greedy


def test_top_k_one_is_greedy(client: openai.OpenAI, greedy: str, hot: str) -> None:
    assert text(chat(client, extra_body={"top_k": 1}, **HOT)) == greedy


def test_min_p_one_is_greedy(client: openai.OpenAI, greedy: str, hot: str) -> None:
    assert text(chat(client, extra_body={"min_p": 1.0}, **HOT)) == greedy


# -- penalties -------------------------------------------------------------------------------


def test_presence_penalty_changes_output(client: openai.OpenAI, greedy_repeat: str) -> None:
    assert text(chat(client, REPEAT, temperature=0, presence_penalty=2.0)) != greedy_repeat


def test_frequency_penalty_changes_output(client: openai.OpenAI, greedy_repeat: str) -> None:
    assert text(chat(client, REPEAT, temperature=0, frequency_penalty=2.0)) != greedy_repeat


def test_repetition_penalty_changes_output(client: openai.OpenAI, greedy_repeat: str) -> None:
    out = text(chat(client, REPEAT, temperature=0, extra_body={"repetition_penalty": 1.5}))
    assert out != greedy_repeat


# -- logit_bias ------------------------------------------------------------------------------


def test_logit_bias_plus_100_forces_token(client: openai.OpenAI) -> None:
    tid = single_token_id(client, "Hello")
    r = chat(client, temperature=0, max_tokens=6, logit_bias={str(tid): 100})
    assert text(r) == "Hello" * 6
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 6


def test_logit_bias_plus_100_forces_token_when_sampling(client: openai.OpenAI) -> None:
    tid = single_token_id(client, "Hello")
    r = chat(client, max_tokens=5, logit_bias={str(tid): 100}, **HOT)
    assert text(r) == "Hello" * 5


def test_logit_bias_minus_100_bans_greedy_first_token(client: openai.OpenAI) -> None:
    base = chat(client, temperature=0, max_tokens=1, logprobs=True)
    assert base.choices[0].logprobs and base.choices[0].logprobs.content
    first = base.choices[0].logprobs.content[0].token
    tid = single_token_id(client, first)
    r = chat(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={str(tid): -100})
    assert r.choices[0].logprobs and r.choices[0].logprobs.content
    assert r.choices[0].logprobs.content[0].token != first
    assert not text(r).startswith(first)


# -- seed and n ------------------------------------------------------------------------------


def test_seed_reproducible_and_different_seeds_differ(client: openai.OpenAI) -> None:
    a = text(chat(client, temperature=1.0, seed=42))
    b = text(chat(client, temperature=1.0, seed=42))
    assert a == b
    others = [text(chat(client, temperature=1.0, seed=s)) for s in (43, 44)]
    assert any(o != a for o in others), others


def test_n_three_choices(client: openai.OpenAI) -> None:
    r = chat(client, n=3, temperature=1.0, seed=5, max_tokens=6, logprobs=True)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    contents = [c.message.content for c in r.choices]
    assert len(set(contents)) > 1, contents
    per_choice = []
    for c in r.choices:
        assert c.logprobs is not None and c.logprobs.content is not None
        k = len(c.logprobs.content)
        per_choice.append(k)
        if c.finish_reason == "length":
            assert k == 6
        else:
            assert c.finish_reason == "stop" and k <= 6
    assert r.usage is not None
    assert r.usage.completion_tokens == sum(per_choice)
    assert r.usage.completion_tokens > 6  # more than a single choice's worth


# -- stop ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def greedy_long(client: openai.OpenAI) -> str:
    return text(chat(client, temperature=0, max_tokens=20))


def test_stop_string(client: openai.OpenAI, greedy_long: str) -> None:
    stop = "village"
    assert stop in greedy_long, greedy_long
    r = chat(client, temperature=0, max_tokens=20, stop=stop)
    c = r.choices[0]
    assert c.message.content == greedy_long[: greedy_long.index(stop)]
    assert stop not in (c.message.content or "")
    assert c.finish_reason == "stop"
    assert extra(c, "stop_reason") == stop


def test_stop_list_earliest_match_wins(client: openai.OpenAI, greedy_long: str) -> None:
    # Two words of the greedy answer, the later one listed first: the earlier one must win.
    words = [w.strip(".,!?") for w in greedy_long.split()]
    early = next(w for w in words[3:] if len(w) >= 4)
    late = next(
        w
        for w in reversed(words)
        if len(w) >= 4 and w not in greedy_long[: greedy_long.index(early) + len(early)]
    )
    stops = [late, early, "zebra-not-there"]
    r = chat(client, temperature=0, max_tokens=20, stop=stops)
    c = r.choices[0]
    cut = greedy_long.index(early)
    assert c.message.content == greedy_long[:cut]
    assert not any(s in (c.message.content or "") for s in stops)
    assert c.finish_reason == "stop"
    assert extra(c, "stop_reason") == early


# -- logprobs --------------------------------------------------------------------------------


def test_logprobs_and_top_logprobs(client: openai.OpenAI, greedy: str) -> None:
    assert chat(client, temperature=0).choices[0].logprobs is None
    r = chat(client, temperature=0, logprobs=True, top_logprobs=3)
    assert_greedy_logprobs(r, greedy, N_TOK, 3)  # real tokens: several bytes, some spaces


def test_prompt_logprobs(client: openai.OpenAI) -> None:
    base = chat(client, temperature=0, max_tokens=2)
    assert (base.model_extra or {}).get("prompt_logprobs") is None
    r = chat(client, temperature=0, max_tokens=2, extra_body={"prompt_logprobs": 2})
    plp = extra(r, "prompt_logprobs")
    assert isinstance(plp, list)
    assert r.usage is not None and len(plp) == r.usage.prompt_tokens
    assert plp[0] is None
    for pos in plp[1:]:
        assert isinstance(pos, dict) and 2 <= len(pos) <= 3, pos
        for tid, info in pos.items():
            assert tid.isdigit()
            assert set(info) >= {"logprob", "rank", "decoded_token"}
            assert info["logprob"] <= 0
            assert isinstance(info["rank"], int) and info["rank"] >= 1
            assert isinstance(info["decoded_token"], str)
        by_rank = {info["rank"]: info["logprob"] for info in pos.values()}
        assert 1 in by_rank and 2 in by_rank
        assert by_rank[1] >= by_rank[2]
    # The user's words are among the prompt tokens.
    decoded = {info["decoded_token"] for pos in plp[1:] for info in pos.values()}
    assert " story" in decoded, decoded


# -- rendering -------------------------------------------------------------------------------


def test_all_roles_render(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Let me check the calculator."},
        {"role": "tool", "tool_call_id": "call_1", "content": "four"},
        {"role": "user", "content": "So what is it?"},
    ]
    r = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=4,
        extra_body={"prompt_logprobs": 0},
    )
    assert text(r)
    plp = extra(r, "prompt_logprobs")
    rendered = "".join(info["decoded_token"] for pos in plp[1:] for info in pos.values())
    pos = 0
    for m in messages:
        marker = f"{m['role']}\n{m['content']}"
        found = rendered.find(marker, pos)
        assert found >= 0, f"{marker!r} not rendered in order in {rendered!r}"
        pos = found + len(marker)
    last = chat(client, "So what is it?", temperature=0, max_tokens=1)
    assert r.usage is not None and last.usage is not None
    assert r.usage.prompt_tokens > last.usage.prompt_tokens + 15
