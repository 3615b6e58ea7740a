"""Prompt-lookup drafts for speculative decoding.

When the text being written repeats text already in the context (code edits, quoting, filling
a template), the tokens that followed the last occurrence of the current n-gram are a cheap
guess at what comes next. The engine decodes the guess together with the real token in one
pass and keeps the prefix the model agrees with, so outputs are exactly those of plain
decoding; only the number of passes changes.

The index is updated incrementally: each new token costs O(max_n) work, never a scan of the
whole context.
"""

from __future__ import annotations


class NgramIndex:
    """Where each n-gram (``min_n <= n <= max_n``) last occurred, by the position after it."""

    __slots__ = ("_follow", "max_n", "min_n", "tokens")

    def __init__(self, tokens: list[int], min_n: int = 2, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        # n-gram -> index of the token that followed its latest occurrence.
        self._follow: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        toks = self.tokens
        for tok in new:
            i = len(toks)  # ``tok``'s position: it follows the n-grams ending at i - 1
            for n in range(self.min_n, min(self.max_n, i) + 1):
                self._follow[tuple(toks[i - n : i])] = i
            toks.append(tok)

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest recent match of the current suffix."""
        toks = self.tokens
        end = len(toks)
        for n in range(min(self.max_n, end), self.min_n - 1, -1):
            at = self._follow.get(tuple(toks[end - n :]))
            if at is not None:
                return toks[at : at + k]
        return []
