"""Legacy ``/v1/completions``: prompt lists and their choice indices, logprobs and echo shapes,
lengths, n and streams, in-process on the fake runner (tests/harness.py) through the official
client. The fake's next token hashes the whole history, so prompts and positions that get
mixed up give different text. The real-model file (tests/e2e/test_completions.py) keeps what
the real vocabulary decides: token-id prompts, special tokens, stop strings, seeds."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import openai
import pytest

from tests.harness import MODEL

PROMPT = "the capital of france is"
PROMPT_B = "once upon a time, there was a little"
LONG_FORM = "write a long essay about dogs."


def greedy(client: openai.OpenAI, prompt: Any, max_tokens: int = 8, **kw: Any) -> Any:
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )


def stream_text(client: openai.OpenAI, **kw: Any) -> dict[int, str]:
    texts: dict[int, str] = {}
    for ch in client.completions.create(model=MODEL, temperature=0, stream=True, **kw):
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    return texts


# -- prompt lists ---------------------------------------------------------------------------


def test_a_list_of_strings_gives_prompt_major_indices(client: openai.OpenAI) -> None:
    a = greedy(client, PROMPT)
    b = greedy(client, PROMPT_B)
    r = greedy(client, [PROMPT, PROMPT_B], n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == by_index[1] == a.choices[0].text
    assert by_index[2] == by_index[3] == b.choices[0].text
    assert a.choices[0].text != b.choices[0].text
    assert r.usage.prompt_tokens == a.usage.prompt_tokens + b.usage.prompt_tokens
    assert r.usage.completion_tokens == 2 * (a.usage.completion_tokens + b.usage.completion_tokens)


def test_a_list_of_token_id_lists(client: openai.OpenAI) -> None:
    ids, ids_b = [10, 11, 12, 13], [20, 21, 22]
    single = greedy(client, ids)
    single_b = greedy(client, ids_b)
    assert single.choices[0].text != single_b.choices[0].text
    r = greedy(client, [ids, ids_b, ids], n=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].text == r.choices[2].text == single.choices[0].text
    assert r.choices[1].text == single_b.choices[0].text
    assert r.usage.prompt_tokens == 2 * len(ids) + len(ids_b)
    r2 = greedy(client, [ids, ids_b], n=2)
    assert [c.index for c in r2.choices] == [0, 1, 2, 3]
    assert r2.choices[0].text == r2.choices[1].text == single.choices[0].text
    assert r2.choices[2].text == r2.choices[3].text == single_b.choices[0].text


# -- logprobs and echo ----------------------------------------------------------------------


def test_logprobs_integer(client: openai.OpenAI) -> None:
    k = 3
    r = greedy(client, PROMPT, max_tokens=10, logprobs=k)
    c = r.choices[0]
    lp = c.logprobs
    n = r.usage.completion_tokens
    assert n == 10
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    # Offsets count from the start of prompt + completion, as OpenAI does.
    assert lp.text_offset[0] == len(PROMPT)
    assert all(b > a for a, b in pairwise(lp.text_offset))
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert isinstance(tlp, float) and tlp <= 0.0
        assert k <= len(top) <= k + 1
        assert all(isinstance(v, float) and v <= 0.0 for v in top.values())
        assert top[tok] == pytest.approx(tlp)
        assert tlp == pytest.approx(max(top.values()))  # greedy: the most likely token


def test_logprobs_zero_gives_at_most_the_chosen_token(client: openai.OpenAI) -> None:
    r = greedy(client, PROMPT, max_tokens=5, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == 5
    for tok, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert top is not None and len(top) <= 1
        if top:
            assert tok in top


def test_no_logprobs_by_default(client: openai.OpenAI) -> None:
    assert greedy(client, PROMPT, max_tokens=3).choices[0].logprobs is None


def test_echo_with_logprobs_covers_prompt_and_completion(client: openai.OpenAI) -> None:
    plain = greedy(client, PROMPT, max_tokens=6, logprobs=2)
    r = greedy(client, PROMPT, max_tokens=6, logprobs=2, echo=True)
    c = r.choices[0]
    lp = c.logprobs
    n_prompt, n_comp = r.usage.prompt_tokens, r.usage.completion_tokens
    assert len(lp.tokens) == n_prompt + n_comp
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)
    assert "".join(lp.tokens) == c.text and c.text == PROMPT + plain.choices[0].text
    assert "".join(lp.tokens[:n_prompt]) == PROMPT
    assert lp.token_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0.0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0
    assert all(b > a for a, b in pairwise(lp.text_offset))
    assert lp.tokens[n_prompt:] == plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[n_prompt:] == pytest.approx(plain.choices[0].logprobs.token_logprobs)


# -- lengths and n --------------------------------------------------------------------------


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=LONG_FORM, temperature=0)
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].model_extra.get("stop_reason") is None  # only a stop string sets it


def test_max_tokens(client: openai.OpenAI) -> None:
    for m in (1, 5):
        r = greedy(client, LONG_FORM, max_tokens=m)
        assert r.usage.completion_tokens == m
        assert r.choices[0].finish_reason == "length"
    five = greedy(client, LONG_FORM, max_tokens=5).choices[0].text
    ten = greedy(client, LONG_FORM, max_tokens=10).choices[0].text
    assert ten.startswith(five) and len(ten) > len(five)


def test_n_choices_sample_apart_and_repeat_with_a_seed(client: openai.OpenAI) -> None:
    def run() -> Any:
        return client.completions.create(
            model=MODEL, prompt=PROMPT_B, n=3, max_tokens=12, temperature=2.0, seed=7
        )

    r = run()
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 3 * 12
    assert len({c.text for c in r.choices}) > 1
    assert [c.text for c in run().choices] == [c.text for c in r.choices]


# -- streams --------------------------------------------------------------------------------


def test_stream_logprobs_match_non_streamed(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, max_tokens=8, logprobs=2)
    flp = full.choices[0].logprobs
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    offsets: list[int] = []
    for ch in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2, stream=True
    ):
        for c in ch.choices:
            if c.logprobs is None:
                continue
            tokens += c.logprobs.tokens or []
            token_logprobs += c.logprobs.token_logprobs or []
            offsets += c.logprobs.text_offset or []
    assert tokens == flp.tokens
    assert token_logprobs == pytest.approx(flp.token_logprobs)
    # Offsets keep counting across chunks: they index the full prompt + completion text.
    assert offsets == flp.text_offset


def test_stream_include_usage(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, max_tokens=10)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.total_tokens == full.usage.total_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert all(ch.choices for ch in chunks[:-1])
    assert "".join(c.text for ch in chunks for c in ch.choices) == full.choices[0].text


def test_stream_of_several_prompts_and_n(client: openai.OpenAI) -> None:
    full = greedy(client, [PROMPT, PROMPT_B], max_tokens=8, n=2)
    texts = stream_text(client, prompt=[PROMPT, PROMPT_B], max_tokens=8, n=2)
    assert texts == {c.index: c.text for c in full.choices}
    assert sorted(texts) == [0, 1, 2, 3]


def test_stream_echo(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, max_tokens=6, echo=True)
    texts = stream_text(client, prompt=PROMPT, max_tokens=6, echo=True)
    assert texts == {0: full.choices[0].text}
    assert full.choices[0].text.startswith(PROMPT) and len(full.choices[0].text) > len(PROMPT)


def test_stream_stop_string(client: openai.OpenAI) -> None:
    base = greedy(client, LONG_FORM, max_tokens=20).choices[0].text
    stop = base[6:8]
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=LONG_FORM, max_tokens=20, temperature=0, stream=True, stop=stop
        )
    )
    assert "".join(c.text for ch in chunks for c in ch.choices) == base[: base.index(stop)]
    last = [c for ch in chunks for c in ch.choices if c.finish_reason]
    assert len(last) == 1
    assert last[0].finish_reason == "stop"
    assert last[0].model_extra.get("stop_reason") == stop
