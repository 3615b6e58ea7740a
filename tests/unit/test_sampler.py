"""Sampler maths on hand-made logits."""

from __future__ import annotations

import math

import numpy as np

from tokenmill.sampling.params import SamplingParams
from tokenmill.sampling.sampler import SamplerState, _draw, apply_penalties, sample_batch


def rows(*r: list[float]) -> np.ndarray:
    return np.array(r, dtype=np.float32)


def state(**kw: object) -> SamplerState:
    return SamplerState(SamplingParams(max_tokens=10, **kw), prompt_ids=[0], index=0)  # type: ignore[arg-type]


def draw(logits: list[float], n: int = 400, **kw: object) -> set[int]:
    st = state(**kw)
    return {sample_batch(rows(logits), [st])[0][0] for _ in range(n)}


def test_greedy_is_argmax_per_row() -> None:
    toks, _ = sample_batch(rows([0, 3, 1], [5, 0, 0]), [state(temperature=0.0)] * 2)
    assert toks == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = [1.0, 2.0, 1.9, 0.5]
    assert draw(logits, top_k=1) == {1}
    assert draw(logits, top_p=0.01) == {1}
    assert draw(logits) == {0, 1, 2, 3}


def test_top_k_limits_candidates() -> None:
    assert draw([1.0, 2.0, 1.9, 0.5, 0.0], top_k=2) == {1, 2}


def test_top_p_keeps_the_nucleus_only() -> None:
    # probs ~ [0.49, 0.49, 0.02]: top_p 0.9 keeps the first two.
    logits = [math.log(0.49), math.log(0.49), math.log(0.02)]
    assert draw(logits, top_p=0.9) == {0, 1}


def test_top_p_exact_on_a_large_vocabulary() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50_000).astype(np.float32)
    st = state(top_p=0.5, seed=1)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1].tolist())
    for _ in range(50):
        tok = sample_batch(logits.copy()[None, :], [st])[0][0]
        assert tok in nucleus


def test_min_p_drops_unlikely_tokens() -> None:
    logits = [math.log(0.6), math.log(0.35), math.log(0.05)]
    assert draw(logits, min_p=0.2) == {0, 1}


def test_logit_bias_forces_and_bans() -> None:
    assert draw([0.0, 5.0, 0.0], logit_bias={2: 100.0}) == {2}
    assert 1 not in draw([0.0, 5.0, 0.0], logit_bias={1: -100.0})
    toks, _ = sample_batch(rows([0.0, 5.0, 0.0]), [state(temperature=0.0, logit_bias={0: 100.0})])
    assert toks == [0]


def test_penalties_follow_the_openai_formula() -> None:
    st = state(presence_penalty=0.5, frequency_penalty=0.25)
    for t in (1, 1, 2):
        st.observe(t)
    row = np.zeros(4, dtype=np.float32)
    apply_penalties(row, st)
    assert row.tolist() == [0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0.0]


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    st = SamplerState(SamplingParams(max_tokens=5, repetition_penalty=2.0), [0, 1], 0)
    row = np.array([4.0, -4.0, 4.0], dtype=np.float32)
    apply_penalties(row, st)
    assert row.tolist() == [2.0, -8.0, 4.0]


def test_same_seed_same_tokens_and_choices_differ() -> None:
    logits = np.zeros((1, 1000), dtype=np.float32)
    seq = lambda st: [sample_batch(logits.copy(), [st])[0][0] for _ in range(20)]  # noqa: E731
    p = SamplingParams(max_tokens=5, seed=42)
    assert seq(SamplerState(p, [], 0)) == seq(SamplerState(p, [], 0))
    assert seq(SamplerState(p, [], 0)) != seq(SamplerState(p, [], 1))


def test_logprobs_are_of_the_raw_distribution() -> None:
    st = state(temperature=0.0, logprobs=2, logit_bias={0: 100.0})
    logits = rows([0.0, math.log(3.0)])
    toks, lps = sample_batch(logits, [st])
    assert toks == [0]
    lp = lps[0]
    assert lp is not None
    assert abs(lp.logprob - math.log(0.25)) < 1e-6
    assert [t for t, _ in lp.top] == [1, 0]


def test_block_draw_follows_the_distribution_over_a_vocabulary() -> None:
    # 1000 tokens (not a multiple of the block size), mass in several blocks, masked tokens.
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, 1000).astype(np.float32)
    logits[::7] = -np.inf  # e.g. a grammar mask: never drawn
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    u = rng.random(40_000)
    counts = np.bincount([_draw(np.exp(logits - logits.max()), x) for x in u], minlength=1000)
    assert counts[::7].sum() == 0
    # Each token's count is binomial: within 5 sigma of its expectation.
    expected = p * u.size
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected * (1 - p)) + 1)


def test_block_draw_edges_never_pick_a_token_without_weight() -> None:
    w = np.zeros(600, np.float32)
    w[[3, 300, 511]] = [1.0, 2.0, 1.0]
    assert _draw(w, 0.0) == 3
    assert _draw(w, 0.2) == 3  # 0.8 of a total of 4
    assert _draw(w, 0.3) == 300
    assert _draw(w, np.nextafter(1.0, 0.0)) == 511  # u * total rounds up to the total
    assert {_draw(w, x) for x in np.linspace(0, 0.999999, 999)} == {3, 300, 511}
