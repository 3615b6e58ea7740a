"""Legacy ``/v1/completions`` through the official client, on the real model: what its
vocabulary decides (token-id prompts, special tokens, echo, stop strings in real text, seeds,
prompt logprobs). The shapes of prompt lists, logprobs, lengths, n and streams are tested
in-process: tests/unit/test_completions_http.py."""

from __future__ import annotations

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
