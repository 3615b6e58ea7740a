"""Token selection for a whole batch of logits rows, one ``SamplerState`` per sequence.

Greedy rows without penalties are one vectorised argmax. Plain temperature sampling draws
from the whole vocabulary without a full cumulative sum (``_draw``). Other rows are filtered on
a small candidate set: ``top_p`` and ``min_p`` need only the few most likely tokens, found with
``argpartition`` and widened until the filter is provably exact, never a full-vocabulary sort.
Exponentials run in float32, where NumPy vectorises them; sums and cumulative sums in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tokenmill.sampling.params import SamplingParams

FloatArray = npt.NDArray[np.float32]
# JSON has no -inf: logprobs are floored here (a token the model gives ~zero mass).
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The sampled token's logprob and the ``k`` most likely tokens at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class SamplerState:
    """Per-sequence sampling state: its RNG and the token counts the penalties need."""

    __slots__ = ("bias_ids", "bias_vals", "counts", "params", "rng", "seen")

    def __init__(self, params: SamplingParams, prompt_ids: list[int], index: int) -> None:
        self.params = params
        # Same seed + same request => same output; each choice of n gets its own stream.
        seed = None if params.seed is None else [generator_seed(params.seed), index]
        self.rng = np.random.default_rng(seed)
        self.counts: dict[int, int] = {}
        self.seen: set[int] = set(prompt_ids) if params.repetition_penalty != 1.0 else set()
        self.bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        self.bias_vals = np.fromiter(params.logit_bias.values(), dtype=np.float32)

    def observe(self, token_id: int) -> None:
        """Record a generated token (penalties look at what was generated so far)."""
        if self.params.has_penalties:
            self.counts[token_id] = self.counts.get(token_id, 0) + 1
            self.seen.add(token_id)

    @property
    def plain_greedy(self) -> bool:
        return self.params.greedy and not self.params.has_penalties and not self.bias_ids.size


def generator_seed(seed: int) -> int:
    """The API takes any 64-bit seed, signed or not; NumPy's generators take non-negative
    ones. Two's complement maps each signed seed to one unsigned seed, deterministically
    (-1 and 2**64 - 1 are the same bits, and give the same stream)."""
    return seed % (1 << 64)


def sample_batch(
    logits: FloatArray,
    states: list[SamplerState],
    constrain: Callable[[FloatArray], None] | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row; ``logits`` is modified in place.

    ``constrain`` (grammar masks) runs after logprobs are taken and before sampling.
    """
    # Logprobs describe the model's own distribution, so they are taken before any filter.
    logp_rows = {
        i: log_softmax(logits[i]) for i, st in enumerate(states) if st.params.logprobs is not None
    }
    if constrain is not None:
        constrain(logits)
    tokens = [0] * len(states)
    greedy_rows = [i for i, st in enumerate(states) if st.plain_greedy]
    if greedy_rows:
        picks = np.argmax(logits[greedy_rows], axis=1)
        for i, tok in zip(greedy_rows, picks.tolist(), strict=True):
            tokens[i] = tok
    for i, st in enumerate(states):
        if not st.plain_greedy:
            tokens[i] = _sample_row(logits[i], st)
    logprobs: list[TokenLogprob | None] = [None] * len(states)
    for i, logp in logp_rows.items():
        k = states[i].params.logprobs or 0
        tok = tokens[i]
        logprobs[i] = TokenLogprob(
            tok, max(float(logp[tok]), LOGPROB_FLOOR), top_k_logprobs(logp, k)
        )
    return tokens, logprobs


def log_softmax(row: FloatArray) -> npt.NDArray[np.float64]:
    return row.astype(np.float64) - _lse(row)


def top_k_logprobs(logp: npt.NDArray[np.float64], k: int) -> tuple[tuple[int, float], ...]:
    if k <= 0:
        return ()
    k = min(k, logp.shape[0])
    idx = np.argpartition(logp, -k)[-k:]
    idx = idx[np.argsort(-logp[idx], kind="stable")]
    return tuple((int(t), max(float(logp[t]), LOGPROB_FLOOR)) for t in idx)


def apply_penalties(row: FloatArray, st: SamplerState) -> None:
    """OpenAI presence/frequency penalties on generated tokens; HF repetition penalty on all."""
    p = st.params
    if st.counts and (p.presence_penalty or p.frequency_penalty):
        ids = np.fromiter(st.counts.keys(), dtype=np.int64, count=len(st.counts))
        cnt = np.fromiter(st.counts.values(), dtype=np.float32, count=len(st.counts))
        row[ids] -= p.frequency_penalty * cnt + p.presence_penalty
    if st.seen and p.repetition_penalty != 1.0:
        ids = np.fromiter(st.seen, dtype=np.int64, count=len(st.seen))
        vals = row[ids]
        row[ids] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)


def _sample_row(row: FloatArray, st: SamplerState) -> int:
    p = st.params
    if p.has_penalties:
        apply_penalties(row, st)
    if st.bias_ids.size:
        row[st.bias_ids] += st.bias_vals
    if p.greedy:
        return int(np.argmax(row))
    x = row * np.float32(1.0 / p.temperature)
    if p.top_k <= 0 and p.top_p >= 1.0 and p.min_p <= 0.0:
        return _draw(np.exp(x - x.max()), st.rng.random())
    ids, probs = _candidates(x, p)
    if p.top_p < 1.0:
        keep = np.cumsum(probs) - probs < p.top_p  # always keeps the most likely token
        ids, probs = ids[keep], probs[keep]
    if p.min_p > 0.0:
        keep = probs >= p.min_p * probs[0]
        ids, probs = ids[keep], probs[keep]
    cdf = np.cumsum(probs)
    pick = int(np.searchsorted(cdf, st.rng.random() * cdf[-1], side="right"))
    return int(ids[min(pick, ids.shape[0] - 1)])


_BLOCK = 256


def _draw(weights: FloatArray, u: float) -> int:
    """The index ``i`` drawn with probability ``weights[i] / weights.sum()``, for ``u`` uniform
    in [0, 1).

    A cumulative sum over the whole vocabulary is a sequential loop (~0.2 ms for 49k floats in
    float64); summing blocks is vectorised, so this searches the block sums, then one block.
    """
    pad = -weights.shape[0] % _BLOCK
    w = np.concatenate([weights, np.zeros(pad, weights.dtype)]) if pad else weights
    block_cdf = np.cumsum(w.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64))
    target = u * block_cdf[-1]
    b = int(np.searchsorted(block_cdf, target, side="right"))
    if b >= block_cdf.shape[0]:  # u * total rounded up to the total: the last block with mass
        b = int(np.flatnonzero(np.diff(block_cdf, prepend=0.0))[-1])
    block = w[b * _BLOCK : (b + 1) * _BLOCK]
    inner = np.cumsum(block, dtype=np.float64)
    j = int(np.searchsorted(inner, target - (block_cdf[b - 1] if b else 0.0), side="right"))
    if j >= _BLOCK:  # rounding between the two sums: the block's last token with weight
        j = int(np.flatnonzero(block)[-1])
    return b * _BLOCK + j


def _candidates(
    x: FloatArray, p: SamplingParams
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Token ids sorted by probability and their probabilities, enough for the filters.

    With ``top_k`` the candidates are the k best, renormalised. Otherwise probabilities are
    over the full vocabulary, and only as many candidates are kept as top-p / min-p can reach.
    """
    vocab = x.shape[0]
    if p.top_k > 0 and p.top_k < vocab:
        ids = np.argpartition(x, -p.top_k)[-p.top_k :]
        vals = x[ids].astype(np.float64)
        return _sorted_probs(ids, vals, _lse(vals))
    lse = _lse(x)
    k = 64
    while True:
        if k >= vocab:
            return _sorted_probs(np.arange(vocab, dtype=np.int64), x.astype(np.float64), lse)
        ids = np.argpartition(x, -k)[-k:]
        ids, probs = _sorted_probs(ids, x[ids].astype(np.float64), lse)
        # Exact once the k best already cover top_p's mass and fall below min_p's cut-off.
        covers_p = p.top_p >= 1.0 or probs.sum() >= p.top_p
        covers_min = p.min_p <= 0.0 or probs[-1] < p.min_p * probs[0]
        if covers_p and covers_min:
            return ids, probs
        k *= 4


def _sorted_probs(
    ids: npt.NDArray[np.int64], vals: npt.NDArray[np.float64], lse: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    order = np.argsort(-vals, kind="stable")
    return ids[order], np.exp(vals[order] - lse)


def _lse(x: npt.NDArray[np.float32] | npt.NDArray[np.float64]) -> float:
    """log(sum(exp(x))): exp in the input's precision (float32 is SIMD, ~7x faster than
    float64 over a vocabulary), the sum in float64."""
    m = x.max()
    return float(m) + float(np.log(np.exp(x - m).sum(dtype=np.float64)))
