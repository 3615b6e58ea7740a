"""Legacy ``/v1/completions`` through the official client, on the real model."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import openai
import pytest

from tests.e2e.conftest import MODEL

PROMPT = "The capital of France is"
PROMPT_B = "Once upon a time, there was a little"
LONG_FORM = "Write a long essay about dogs."


def greedy(client: openai.OpenAI, prompt: Any, max_tokens: int = 8, **kw: Any) -> Any:
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )


_TOKENS: dict[str, tuple[list[int], list[str]]] = {}


def prompt_token_ids(client: openai.OpenAI, prompt: str) -> tuple[list[int], list[str]]:
    """Ids and texts of the prompt's tokens after the first (``prompt_logprobs`` names them)."""
    if prompt in _TOKENS:
        return _TOKENS[prompt]
    r = greedy(client, prompt, max_tokens=1, extra_body={"prompt_logprobs": 0})
    plp = r.choices[0].model_extra["prompt_logprobs"]
    assert plp[0] is None
    ids: list[int] = []
    texts: list[str] = []
    for entry in plp[1:]:
        # With prompt_logprobs=0 each position holds exactly the actual prompt token.
        assert len(entry) == 1, entry
        ((tid, info),) = entry.items()
        ids.append(int(tid))
        texts.append(info["decoded_token"])
    _TOKENS[prompt] = (ids, texts)
    return ids, texts


# -- prompt forms ---------------------------------------------------------------------------


def test_string_prompt(client: openai.OpenAI) -> None:
    r = greedy(client, PROMPT)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == MODEL
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.text and not c.text.startswith(PROMPT)
    assert c.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # Greedy decoding is deterministic.
    assert greedy(client, PROMPT).choices[0].text == c.text


def test_list_of_strings_prompt_major_indices(client: openai.OpenAI) -> None:
    a = greedy(client, PROMPT)
    b = greedy(client, PROMPT_B)
    r = greedy(client, [PROMPT, PROMPT_B], n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == by_index[1] == a.choices[0].text
    assert by_index[2] == by_index[3] == b.choices[0].text
    assert a.choices[0].text != b.choices[0].text
    assert r.usage is not None and a.usage is not None and b.usage is not None
    assert r.usage.prompt_tokens == a.usage.prompt_tokens + b.usage.prompt_tokens
    assert r.usage.completion_tokens == 2 * (a.usage.completion_tokens + b.usage.completion_tokens)


def test_token_id_prompt_matches_string_prompt(client: openai.OpenAI) -> None:
    ids, texts = prompt_token_ids(client, PROMPT)
    assert len(ids) >= 3
    suffix = "".join(texts)  # the prompt without its first token, e.g. " capital of France is"
    as_text = greedy(client, suffix)
    as_ids = greedy(client, ids)
    assert as_ids.usage is not None and as_text.usage is not None
    assert as_ids.usage.prompt_tokens == len(ids) == as_text.usage.prompt_tokens
    assert as_ids.choices[0].text == as_text.choices[0].text
    # Echo of a token-id prompt shows its decoded text.
    echoed = greedy(client, ids, max_tokens=2, echo=True)
    assert echoed.choices[0].text.startswith(suffix)


def test_list_of_token_id_lists(client: openai.OpenAI) -> None:
    ids, _ = prompt_token_ids(client, PROMPT)
    ids_b, _ = prompt_token_ids(client, PROMPT_B)
    single = greedy(client, ids)
    single_b = greedy(client, ids_b)
    r = greedy(client, [ids, ids_b, ids], n=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].text == r.choices[2].text == single.choices[0].text
    assert r.choices[1].text == single_b.choices[0].text
    assert r.usage is not None
    assert r.usage.prompt_tokens == 2 * len(ids) + len(ids_b)
    r2 = greedy(client, [ids, ids_b], n=2)
    assert [c.index for c in r2.choices] == [0, 1, 2, 3]
    assert r2.choices[0].text == r2.choices[1].text == single.choices[0].text
    assert r2.choices[2].text == r2.choices[3].text == single_b.choices[0].text


def test_empty_prompt_starts_from_bos(client: openai.OpenAI) -> None:
    """``""`` is the token prompt ``[bos_id]`` (``<|im_start|>`` here), as OpenAI continues an
    empty prompt from its beginning-of-text token: the same text, usage and echo."""
    r = greedy(client, "", echo=True, logprobs=0)
    by_token = greedy(client, "<|im_start|>", echo=True, logprobs=0)  # one token, parsed
    assert by_token.usage is not None and by_token.usage.prompt_tokens == 1
    c = r.choices[0]
    assert c.text == by_token.choices[0].text and c.text.startswith("<|im_start|>")
    assert r.usage is not None and r.usage.prompt_tokens == 1
    assert c.logprobs is not None and c.logprobs.tokens[0] == "<|im_start|>"
    assert "".join(c.logprobs.tokens) == c.text
    listed = greedy(client, ["", PROMPT])
    assert listed.choices[0].text == greedy(client, "").choices[0].text
    assert listed.choices[1].text == greedy(client, PROMPT).choices[0].text


# -- echo and logprobs ----------------------------------------------------------------------


def test_echo(client: openai.OpenAI) -> None:
    plain = greedy(client, PROMPT)
    r = greedy(client, PROMPT, echo=True)
    assert r.choices[0].text == PROMPT + plain.choices[0].text
    assert r.usage is not None and plain.usage is not None
    assert r.usage.completion_tokens == plain.usage.completion_tokens
    # A stop string only matches generated text, never the echoed prompt.
    r = greedy(client, PROMPT, echo=True, stop="capital")
    assert r.choices[0].text == PROMPT + plain.choices[0].text


def test_echo_token_ids_with_special_tokens(client: openai.OpenAI) -> None:
    """A pre-tokenized prompt's echo shows every token, special ones included, and agrees with
    the echoed logprob tokens and their offsets."""
    # Positions 1.. of this string prompt: <|im_start|>, "user", ..., <|im_end|>.
    ids, texts = prompt_token_ids(client, "Hi<|im_start|>user\nHi<|im_end|>")
    assert texts[0] == "<|im_start|>" and texts[-1] == "<|im_end|>"
    r = greedy(client, ids, max_tokens=2, echo=True, logprobs=0)
    c = r.choices[0]
    assert c.logprobs is not None
    assert c.logprobs.tokens[0] == "<|im_start|>"
    assert c.text.startswith("<|im_start|>user\nHi<|im_end|>")
    assert "".join(c.logprobs.tokens) == c.text
    for i, off in enumerate(c.logprobs.text_offset):
        assert off == len("".join(c.logprobs.tokens[:i]))


def test_logprobs_integer(client: openai.OpenAI) -> None:
    k = 3
    r = greedy(client, PROMPT, max_tokens=10, logprobs=k)
    c = r.choices[0]
    lp = c.logprobs
    assert lp is not None and r.usage is not None
    n = r.usage.completion_tokens
    assert n > 0
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n
    assert "".join(lp.tokens) == c.text
    # Offsets count from the start of prompt + completion, as OpenAI does.
    assert lp.text_offset[0] == len(PROMPT)
    assert all(b > a for a, b in pairwise(lp.text_offset))
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert isinstance(tlp, float) and tlp <= 0.0
        assert isinstance(top, dict)
        assert k <= len(top) <= k + 1
        assert all(isinstance(v, float) and v <= 0.0 for v in top.values())
        assert tok in top
        # Greedy: the chosen token is the most likely one.
        assert top[tok] == pytest.approx(tlp)
        assert tlp == pytest.approx(max(top.values()))


def test_logprobs_zero(client: openai.OpenAI) -> None:
    r = greedy(client, PROMPT, max_tokens=5, logprobs=0)
    lp = r.choices[0].logprobs
    assert lp is not None and r.usage is not None
    assert len(lp.tokens) == r.usage.completion_tokens
    for tok, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert top is not None and len(top) <= 1
        if top:
            assert tok in top


def test_no_logprobs_by_default(client: openai.OpenAI) -> None:
    assert greedy(client, PROMPT, max_tokens=3).choices[0].logprobs is None


def test_echo_with_logprobs(client: openai.OpenAI) -> None:
    plain = greedy(client, PROMPT, max_tokens=6, logprobs=2)
    r = greedy(client, PROMPT, max_tokens=6, logprobs=2, echo=True)
    c = r.choices[0]
    lp = c.logprobs
    assert lp is not None and r.usage is not None
    n_prompt, n_comp = r.usage.prompt_tokens, r.usage.completion_tokens
    assert len(lp.tokens) == n_prompt + n_comp
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)
    assert "".join(lp.tokens) == c.text
    assert c.text.startswith(PROMPT)
    assert "".join(lp.tokens[:n_prompt]) == PROMPT
    assert lp.token_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0.0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0
    assert all(b > a for a, b in pairwise(lp.text_offset))
    # The completion part is the same as without echo.
    assert plain.choices[0].logprobs is not None
    assert lp.tokens[n_prompt:] == plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[n_prompt:] == pytest.approx(plain.choices[0].logprobs.token_logprobs)


def test_echo_logprobs_agree_with_prompt_logprobs(client: openai.OpenAI) -> None:
    r = greedy(
        client, PROMPT, max_tokens=1, logprobs=0, echo=True, extra_body={"prompt_logprobs": 0}
    )
    c = r.choices[0]
    assert c.logprobs is not None and r.usage is not None
    plp = c.model_extra["prompt_logprobs"]
    assert len(plp) == r.usage.prompt_tokens
    for echo_lp, entry in zip(c.logprobs.token_logprobs[1 : len(plp)], plp[1:], strict=True):
        ((_, info),) = entry.items()
        assert echo_lp == pytest.approx(info["logprob"])


# -- lengths, stops, n, seed ----------------------------------------------------------------


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=LONG_FORM, temperature=0)
    assert r.usage is not None
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"


def test_max_tokens(client: openai.OpenAI) -> None:
    for m in (1, 5):
        r = greedy(client, LONG_FORM, max_tokens=m)
        assert r.usage is not None
        assert r.usage.completion_tokens == m
        assert r.choices[0].finish_reason == "length"
    five = greedy(client, LONG_FORM, max_tokens=5).choices[0].text
    ten = greedy(client, LONG_FORM, max_tokens=10).choices[0].text
    assert ten.startswith(five) and len(ten) > len(five)


def test_stop_string(client: openai.OpenAI) -> None:
    base = greedy(client, LONG_FORM, max_tokens=20).choices[0].text
    words = base.split()
    assert len(words) >= 4, base
    stop = words[2]
    expected = base[: base.index(stop)]
    r = greedy(client, LONG_FORM, max_tokens=20, stop=stop)
    c = r.choices[0]
    assert c.text == expected
    assert stop not in c.text
    assert c.finish_reason == "stop"
    assert c.model_extra.get("stop_reason") == stop
    # Several stops: the earliest wins; an unused one changes nothing.
    r2 = greedy(client, LONG_FORM, max_tokens=20, stop=["\u2603never\u2603", stop])
    assert r2.choices[0].text == expected
    assert r2.choices[0].model_extra.get("stop_reason") == stop


def test_no_stop_reason_on_length(client: openai.OpenAI) -> None:
    r = greedy(client, LONG_FORM, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].model_extra.get("stop_reason") is None


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt=PROMPT_B, n=3, max_tokens=12, temperature=1.0, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage is not None
    assert 3 <= r.usage.completion_tokens <= 3 * 12
    # Sampled with temperature 1 the choices are not all the same.
    assert len({c.text for c in r.choices}) > 1


def test_seed(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(
            model=MODEL, prompt=PROMPT_B, max_tokens=16, temperature=1.0, seed=seed
        )
        return r.choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    others = {sample(s) for s in (1, 2, 3)}
    assert others != {first}
    assert len(others | {first}) > 1


def test_seed_with_n(client: openai.OpenAI) -> None:
    def run() -> list[str]:
        r = client.completions.create(
            model=MODEL, prompt=PROMPT_B, n=2, max_tokens=12, temperature=1.0, seed=99
        )
        return [c.text for c in r.choices]

    assert run() == run()


# -- prompt_logprobs ------------------------------------------------------------------------


def test_prompt_logprobs(client: openai.OpenAI) -> None:
    k = 2
    r = greedy(client, [PROMPT, PROMPT_B], max_tokens=2, n=2, extra_body={"prompt_logprobs": k})
    a = greedy(client, PROMPT, max_tokens=1)
    b = greedy(client, PROMPT_B, max_tokens=1)
    assert a.usage is not None and b.usage is not None
    assert len(r.choices) == 4
    for c in r.choices:
        plp = c.model_extra.get("prompt_logprobs")
        assert isinstance(plp, list)
        expected_len = a.usage.prompt_tokens if c.index < 2 else b.usage.prompt_tokens
        assert len(plp) == expected_len
        assert plp[0] is None
        for entry in plp[1:]:
            assert isinstance(entry, dict) and 1 <= len(entry) <= k + 1
            for tid, info in entry.items():
                assert int(tid) >= 0
                assert isinstance(info["logprob"], float) and info["logprob"] <= 0.0
                assert isinstance(info["rank"], int) and info["rank"] >= 1
                assert isinstance(info["decoded_token"], str)
    # The decoded actual tokens spell the prompt (after its first token).
    plp = r.choices[0].model_extra["prompt_logprobs"]
    ids, texts = prompt_token_ids(client, PROMPT)
    assert all(str(t) in e for t, e in zip(ids, plp[1:], strict=True))
    assert PROMPT.endswith("".join(texts))
    # Not requested: not present (or null).
    assert a.choices[0].model_extra.get("prompt_logprobs") is None


# -- streaming ------------------------------------------------------------------------------


def test_stream_matches_non_streamed(client: openai.OpenAI) -> None:
    full = greedy(client, LONG_FORM, max_tokens=20)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=LONG_FORM, max_tokens=20, temperature=0, stream=True
        )
    )
    assert len(chunks) > 1
    assert all(ch.object == "text_completion" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    text = "".join(c.text for ch in chunks for c in ch.choices)
    assert text == full.choices[0].text
    finals = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert all(ch.usage is None for ch in chunks)


def test_stream_logprobs_match_non_streamed(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, max_tokens=8, logprobs=2)
    flp = full.choices[0].logprobs
    assert flp is not None
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
            model=MODEL,
            prompt=PROMPT,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and full.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.total_tokens == full.usage.total_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert all(ch.choices for ch in chunks[:-1])
    assert "".join(c.text for ch in chunks for c in ch.choices) == full.choices[0].text


def test_stream_multi_prompt_n(client: openai.OpenAI) -> None:
    full = greedy(client, [PROMPT, PROMPT_B], max_tokens=8, n=2)
    texts: dict[int, str] = {}
    for ch in client.completions.create(
        model=MODEL, prompt=[PROMPT, PROMPT_B], max_tokens=8, n=2, temperature=0, stream=True
    ):
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert sorted(texts) == [0, 1, 2, 3]
    assert texts == {c.index: c.text for c in full.choices}


def test_stream_echo(client: openai.OpenAI) -> None:
    full = greedy(client, PROMPT, max_tokens=6, echo=True)
    text = "".join(
        c.text
        for ch in client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, stream=True, echo=True
        )
        for c in ch.choices
    )
    assert text == full.choices[0].text
    assert text.startswith(PROMPT)


def test_stream_stop_string(client: openai.OpenAI) -> None:
    base = greedy(client, LONG_FORM, max_tokens=20).choices[0].text
    stop = base.split()[2]
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=LONG_FORM, max_tokens=20, temperature=0, stream=True, stop=stop
        )
    )
    text = "".join(c.text for ch in chunks for c in ch.choices)
    assert text == base[: base.index(stop)]
    last = [c for ch in chunks for c in ch.choices if c.finish_reason]
    assert len(last) == 1
    assert last[0].finish_reason == "stop"
    assert last[0].model_extra.get("stop_reason") == stop
