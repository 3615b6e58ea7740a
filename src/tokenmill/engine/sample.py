"""Sampling a step's tokens, with prompt-lookup drafts verified in the same pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tokenmill.core.sequence import Sequence
from tokenmill.sampling.sampler import FloatArray, SamplerState, TokenLogprob, sample_batch
from tokenmill.structured.matcher import Matcher, apply_masks

Sampled = list[tuple[int, TokenLogprob | None]]


@dataclass(frozen=True, slots=True)
class Pick:
    """A sequence that samples this step: from logits ``row``, then, while the model agrees
    with ``draft``, from the rows after it."""

    seq: Sequence
    row: int
    draft: tuple[int, ...] = ()


def sample_picks(
    logits: np.ndarray,
    picks: list[Pick],
    states: list[SamplerState],
    matchers: list[Matcher | None],
) -> list[Sampled]:
    """Sample each pick's token; where it equals the next draft token, that draft token
    is now real, so sample again from the row after it, and so on.

    Every token is sampled from the same distribution, with the same random draws, as
    without speculation: the draft only decides how many rows are at hand. Every token but
    each pick's last has been observed by its sampler on return.
    """
    tokens, lps = sample_batch(logits[[p.row for p in picks]], states, _constrainer(matchers))
    out: list[Sampled] = [[(tok, lp)] for tok, lp in zip(tokens, lps, strict=True)]
    agreeing = [i for i, p in enumerate(picks) if p.draft and tokens[i] == p.draft[0]]
    r = 1
    while agreeing:
        for i in agreeing:
            states[i].observe(out[i][-1][0])
        rows = logits[[picks[i].row + r for i in agreeing]]
        tokens, lps = sample_batch(rows, [states[i] for i in agreeing])
        still = []
        for i, tok, lp in zip(agreeing, tokens, lps, strict=True):
            out[i].append((tok, lp))
            if r < len(picks[i].draft) and tok == picks[i].draft[r]:
                still.append(i)
        agreeing, r = still, r + 1
    return out


def _constrainer(matchers: list[Matcher | None]) -> Callable[[FloatArray], None] | None:
    """Masking for the rows whose sequences follow a grammar; None when none do, so
    unconstrained batches pay nothing."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return None
    active = [m for m in matchers if m is not None]
    return lambda logits: apply_masks(logits, rows, active)
