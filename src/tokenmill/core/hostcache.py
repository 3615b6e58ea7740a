"""The host-memory tier of the prefix cache: which token sequences have their KV saved in RAM.

A slot's KV outlives its sequence only until another sequence takes the slot. With more
conversations than slots (16 chats on 8 slots), a conversation's history is usually gone
from every slot when its next turn arrives, and recomputing a long history costs seconds.
So before a slot is overwritten, the scheduler asks the runner to save its KV to RAM (a
llama.cpp sequence state, ~23 KB per token for the embedded model), and a later prompt that
shares a long prefix with a saved entry gets it restored instead of recomputed: restoring a
thousand tokens is a memory copy of tens of milliseconds, computing them several seconds.

This module is the bookkeeping only (pure Python, like the scheduler): entries by id with
their tokens, least recently used first, bounded by a number of tokens. The runner holds the
bytes; the scheduler turns this module's decisions into ``SaveOp`` / ``DropOp`` / restores.
"""

from __future__ import annotations

from collections import OrderedDict

from tokenmill.core.prefix import common_prefix_len


class HostCache:
    """Saved token sequences, LRU, at most ``capacity`` tokens in all (0: the tier is off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[int, list[int]] = OrderedDict()  # oldest use first
        self.tokens = 0
        self._next_id = 0
        # Lifetime counts, for stats and tests.
        self.saves = self.restores = 0

    def best(self, tokens: list[int], limit: int) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with ``tokens`` (at most ``limit``), and that
        length; ``(None, 0)`` when none shares anything."""
        best_id, best_len = None, 0
        for entry_id, held in self.entries.items():
            n = common_prefix_len(held, tokens, limit)
            if n > best_len:
                best_id, best_len = entry_id, n
        return best_id, best_len

    def covers(self, tokens: list[int]) -> bool:
        """Is ``tokens`` a prefix of an entry already (saving it again would add nothing)?"""
        n = len(tokens)
        return any(
            len(held) >= n and common_prefix_len(held, tokens, n) == n
            for held in self.entries.values()
        )

    def touch(self, entry_id: int) -> None:
        """An entry was restored: it is now the most recently used."""
        self.entries.move_to_end(entry_id)
        self.restores += 1

    def add(self, tokens: list[int], pinned: int | None = None) -> tuple[int | None, list[int]]:
        """Record ``tokens`` as saved. Returns its new id (None if it cannot fit) and the ids
        dropped to make room or made redundant (prefixes of it), which the runner must free.
        ``pinned`` is never dropped."""
        room = self.capacity - (len(self.entries[pinned]) if pinned is not None else 0)
        if len(tokens) > room:
            return None, []
        dropped = [
            entry_id
            for entry_id, held in self.entries.items()
            if entry_id != pinned
            and len(held) <= len(tokens)
            and common_prefix_len(held, tokens) == len(held)
        ]
        for entry_id in dropped:
            self._remove(entry_id)
        while self.tokens + len(tokens) > self.capacity:
            oldest = next(e for e in self.entries if e != pinned)
            self._remove(oldest)
            dropped.append(oldest)
        entry_id = self._next_id
        self._next_id += 1
        self.entries[entry_id] = list(tokens)
        self.tokens += len(tokens)
        self.saves += 1
        return entry_id, dropped

    def _remove(self, entry_id: int) -> None:
        self.tokens -= len(self.entries.pop(entry_id))
