"""Logprobs of the prompt's own tokens (``prompt_logprobs``), from prefill logits rows."""

from __future__ import annotations

import numpy as np

from tokenmill.engine.messages import PromptLogprob
from tokenmill.sampling.sampler import LOGPROB_FLOOR, log_softmax, top_k_logprobs


def prompt_logprobs_rows(
    rows: np.ndarray, token_ids: list[int], start: int, prompt_len: int, k: int
) -> list[PromptLogprob]:
    """Row ``j`` holds the logits at position ``start + j``: they predict the next token."""
    out: list[PromptLogprob] = []
    for j in range(rows.shape[0]):
        pos = start + j + 1
        if pos >= prompt_len:
            break
        logp = log_softmax(rows[j])
        tok = token_ids[pos]
        lp = float(logp[tok])
        rank = 1 + int(np.count_nonzero(logp > lp))
        out.append(PromptLogprob(tok, max(lp, LOGPROB_FLOOR), rank, top_k_logprobs(logp, k)))
    return out
