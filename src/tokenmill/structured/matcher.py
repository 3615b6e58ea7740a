"""Per-sequence grammar state for the engine thread, and masking a batch of logits.

A ``Matcher`` follows one sequence's tokens through its grammar. Each step the engine asks
``apply_masks`` to set the logits of every token the grammar forbids to -inf, for the
constrained rows only; unconstrained rows are never touched. When the grammar may end, its
end-of-generation tokens are allowed; once it cannot go on (``is_finished``) only they are,
and the engine can stop the sequence without sampling. A matcher that hits an llguidance
limit mid-generation (``error``) also allows only end-of-generation, so the sequence ends;
so does one whose masks keep taking over ``SLOW_MASK_SECONDS`` (fuel bounds most grammars'
mask cost, not all: a regex like ``a{50000}`` deep in a schema costs ~45 ms a token), so no
grammar can slow the whole batch for long. The engine should read ``error`` when a matcher
finishes, to tell a complete output from an abandoned one.

A matcher of tool calls also carries a ``CallWatcher``: a context-free grammar cannot say
"no call may repeat an earlier one", so the watcher follows the calls and, when one repeats,
the matcher is finished (no error) and allows only end-of-generation, like a complete
grammar.

Masks are computed one sequence after another: llguidance's parallel executor measured
slower than a plain loop on 2 cores (70 vs 42 us per sequence at batch 8).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy as llnp
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenmill.structured.calllist import CallWatcher

Bitmask = npt.NDArray[np.int32]

SLOW_MASK_SECONDS = 0.05  # CPU time of this thread: a busy machine does not make masks "slow"
SLOW_MASKS_ALLOWED = 3  # a few, so one unlucky pause (GC, preemption) is forgiven

# Byte value -> the 8 logit biases of its bits (0 allowed, -inf forbidden). Adding a bias
# row is branch-free: 27 us per 49k-token row whatever the mask, where boolean indexing
# took 50-490 us depending on how mixed the mask is.
_BIAS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") > 0,
    np.float32(0.0),
    np.float32(-np.inf),
).astype(np.float32)


class Matcher:
    """One sequence's position in its grammar (wraps ``llguidance.LLMatcher``)."""

    __slots__ = ("_calls", "_eos", "_gave_up", "_m", "_slow")

    def __init__(
        self,
        ll: llguidance.LLMatcher,
        eos_ids: Sequence[int],
        calls: CallWatcher | None = None,
    ) -> None:
        self._m = ll
        self._eos = tuple(eos_ids)
        self._slow = 0
        self._gave_up: str | None = None
        self._calls = calls

    def _ended(self) -> bool:
        """Only end-of-generation may follow, whatever the grammar says."""
        return self._gave_up is not None or (self._calls is not None and self._calls.ended)

    @property
    def ll(self) -> llguidance.LLMatcher:
        return self._m

    def fill_mask(self, bitmask: Bitmask, row: int) -> None:
        """Write the allowed-token bits (bit ``t % 32`` of word ``t // 32``) into a row of an
        ``int32`` bitmask of shape ``[rows, ceil(vocab / 32)]``."""
        if self._ended():
            self._only_eos(bitmask[row])
            return
        started = time.thread_time()
        llnp.fill_next_token_bitmask(self._m, bitmask, row)
        if time.thread_time() - started > SLOW_MASK_SECONDS:
            self._slow += 1
            if self._slow >= SLOW_MASKS_ALLOWED:
                self._gave_up = "the grammar is too slow to follow (token masks took too long)"

    def _only_eos(self, words: npt.NDArray[np.int32]) -> None:
        words[:] = 0
        bits = words.view(np.uint32)
        for t in self._eos:
            bits[t // 32] |= np.uint32(1 << (t % 32))

    def accept(self, token_id: int) -> bool:
        """Advance by a sampled token; False if the grammar forbids it (then ``error``)."""
        if self._ended():
            return token_id in self._eos
        ok = bool(self._m.consume_token(token_id))
        if ok and self._calls is not None:
            self._calls.feed(token_id)
        return ok

    def count_valid(self, token_ids: list[int]) -> int:
        """How many of these (draft) tokens the grammar would accept in a row, unchanged."""
        return 0 if self._ended() else int(self._m.validate_tokens(token_ids))

    def fill_draft_masks(self, bitmask: Bitmask, row: int, drafts: list[int]) -> int:
        """For speculative decoding: the mask here into ``row``, and the mask after each
        grammatical draft token into the rows after it. Returns how many drafts are
        grammatical (``k``: rows ``row .. row + k`` are written); the state is unchanged."""
        self.fill_mask(bitmask, row)
        k = self.count_valid(drafts)
        for i, token in enumerate(drafts[:k]):
            self._m.consume_token(token)
            self.fill_mask(bitmask, row + 1 + i)
        if k:
            self._m.rollback(k)
        return k

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` accepted tokens (rejected speculative tokens)."""
        if not n or self._gave_up is not None:
            return
        if not self._m.rollback(n):
            raise ValueError(f"cannot roll back {n} tokens: {self._m.get_error()}")
        if self._calls is not None:
            self._calls.rollback(n)

    def is_finished(self) -> bool:
        """Nothing but end-of-generation may follow: the grammar is complete, a repeated tool
        call ended the list, or the matcher gave up (then ``error`` says why)."""
        return self._ended() or bool(self._m.is_stopped())

    def is_accepting(self) -> bool:
        """The output so far is a complete match (it may still go on)."""
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str | None:
        """Why the matcher gave up (a forbidden token, a limit hit, too slow), else None."""
        if self._gave_up is not None:
            return self._gave_up
        return (self._m.get_error() or "grammar error") if self._m.is_error() else None

    def fork(self) -> Matcher:
        """An independent copy at the same position (for ``n`` > 1)."""
        calls = self._calls.fork() if self._calls is not None else None
        twin = Matcher(self._m.deep_copy(), self._eos, calls)
        twin._slow, twin._gave_up = self._slow, self._gave_up
        return twin


def allocate_bitmask(rows: int, vocab_size: int) -> Bitmask:
    """A bitmask buffer for ``rows`` sequences, every token allowed."""
    return llnp.allocate_token_bitmask(rows, vocab_size)


def fill_masks(bitmask: Bitmask, matchers: Sequence[Matcher]) -> None:
    """Row ``i`` of ``bitmask`` gets ``matchers[i]``'s mask."""
    for i, m in enumerate(matchers):
        m.fill_mask(bitmask, i)


def apply_bitmask(logits: npt.NDArray[np.float32], rows: Sequence[int], bitmask: Bitmask) -> None:
    """Set ``logits[rows[i], t]`` to -inf wherever bit ``t`` of ``bitmask[i]`` is clear
    (logits must be finite: adding -inf to +inf would give NaN)."""
    vocab = logits.shape[1]
    bits = min(vocab, bitmask.shape[1] * 32)
    for i, row in enumerate(rows):
        bias = _BIAS.take(bitmask[i].view(np.uint8), axis=0).reshape(-1)
        line = logits[row]
        line[:bits] += bias[:bits]
        if bits < vocab:  # ids past the tokenizer's vocabulary can never be grammatical
            line[bits:] = -np.inf


def apply_masks(
    logits: npt.NDArray[np.float32], rows: Sequence[int], matchers: Sequence[Matcher]
) -> None:
    """Mask ``logits[rows[i]]`` in place by ``matchers[i]``; other rows are untouched."""
    if not rows:
        return
    bitmask = np.empty((len(rows), (logits.shape[1] + 31) // 32), dtype=np.int32)
    fill_masks(bitmask, matchers)
    apply_bitmask(logits, rows, bitmask)
