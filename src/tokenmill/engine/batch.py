"""Turn a step's scheduled chunks into the flat arrays one ``llama_decode`` call takes."""

from __future__ import annotations

import numpy as np

from tokenmill.core.plan import ScheduledChunk
from tokenmill.runner.base import Batch


def build_batch(chunks: list[ScheduledChunk]) -> Batch:
    """Concatenate chunks; a chunk asks for logits at its last token (and at each draft
    token after it), or at all of them."""
    total = sum(c.num_tokens for c in chunks)
    tokens = np.empty(total, dtype=np.int32)
    positions = np.empty(total, dtype=np.int32)
    slots = np.empty(total, dtype=np.int32)
    want = np.zeros(total, dtype=np.bool_)
    at = 0
    for c in chunks:
        end = at + c.num_tokens
        known = c.num_tokens - c.num_draft
        tokens[at : at + known] = c.seq.token_ids[c.start : c.start + known]
        tokens[at + known : end] = c.seq.draft  # verified against the logits before them
        positions[at:end] = np.arange(c.start, c.start + c.num_tokens, dtype=np.int32)
        assert c.seq.slot is not None
        slots[at:end] = c.seq.slot
        if c.all_logits:
            want[at:end] = True
        elif c.sample:
            want[end - 1 - c.num_draft : end] = True
        at = end
    return Batch(tokens, positions, slots, want)
