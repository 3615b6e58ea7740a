"""Prefix-aware routing: send a request to the replica most likely to hold its prompt's prefix
in its KV cache, unless that would pile work on a busy replica.

Each replica's recent prompts are remembered as chained hashes of their 16-token blocks (the
hash of a block covers every block before it, so a set of them is a prefix tree: a prompt's
match is its number of leading blocks found). A request goes to the replica with the longest
match if it shares at least ``min_match`` tokens and that replica is not much busier than the
idlest one: at most ``imbalance`` more ongoing requests, or ``ratio`` times as many (a fixed
gap alone would send everything by load in a large, busy fleet, where the busiest and idlest
of 64 replicas always differ by a few; measured with ``benchmarks/fleet_sim.py``). Otherwise
the request goes to the less loaded of two random replicas (power of two choices), as Ray
Serve's default router and llm-d do.

``PrefixPolicy`` is pure and unit-tested; ``fleet.ray_router.PrefixAwareRouter`` adapts it to
Ray Serve's ``RequestRouter`` (one instance per ingress replica, each learning from what it
routes).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

BLOCK = 16  # tokens per hashed block
MIN_MATCH = 64  # tokens a prefix must share to be worth routing for
IMBALANCE = 4  # more ongoing requests than the idlest replica that a prefix match may carry
RATIO = 1.0  # ... or this much more, relative to the idlest replica's load
MAX_BLOCKS = 65536  # remembered blocks per replica, least recently used first out


def block_hashes(tokens: Sequence[int], limit: int | None = None) -> list[int]:
    """Chained hashes of the full ``BLOCK``-token blocks of ``tokens``."""
    out: list[int] = []
    h = 0
    n = len(tokens) // BLOCK if limit is None else min(len(tokens) // BLOCK, limit)
    for i in range(n):
        h = hash((h, tuple(tokens[i * BLOCK : (i + 1) * BLOCK])))
        out.append(h)
    return out


class PrefixPolicy:
    """Which replica gets a prompt, given what each was sent before and their loads."""

    def __init__(
        self,
        min_match: int = MIN_MATCH,
        imbalance: int = IMBALANCE,
        ratio: float = RATIO,
        max_blocks: int = MAX_BLOCKS,
        rng: random.Random | None = None,
    ) -> None:
        self.min_match, self.imbalance, self.ratio = min_match, imbalance, ratio
        self.max_blocks = max_blocks
        self.rng = rng or random.Random()
        self._blocks: dict[Hashable, OrderedDict[int, None]] = {}
        self.prefix_routed = self.load_routed = 0  # decisions, for stats and tests

    def match(self, replica: Hashable, hashes: Sequence[int]) -> int:
        """Tokens of the prompt's leading blocks the replica was sent before."""
        seen = self._blocks.get(replica)
        if not seen:
            return 0
        n = 0
        for h in hashes:
            if h not in seen:
                break
            n += 1
        return n * BLOCK

    def rank(
        self, hashes: Sequence[int], loads: Mapping[Hashable, int | None]
    ) -> list[list[Hashable]]:
        """Replicas to try, best first (ranks of equally good ones)."""
        replicas = list(loads)
        if not replicas:
            return []
        if hashes:
            matches = {r: self.match(r, hashes) for r in replicas}
            best = max(matches.values())
            idlest = min((n or 0) for n in loads.values())
            bound = max(self.imbalance, self.ratio * idlest)
            chosen = [
                r for r in replicas if matches[r] == best and (loads[r] or 0) - idlest <= bound
            ]
            if best >= self.min_match and chosen:
                self.prefix_routed += 1
                self.rng.shuffle(chosen)  # equal loads: no replica always first
                chosen.sort(key=lambda r: loads[r] or 0)
                rest = [r for r in replicas if r not in chosen]
                return [chosen, self._two_choices(rest, loads)] if rest else [chosen]
        self.load_routed += 1
        return [self._two_choices(replicas, loads)]

    def _two_choices(
        self, replicas: list[Hashable], loads: Mapping[Hashable, int | None]
    ) -> list[Hashable]:
        picked = self.rng.sample(replicas, min(2, len(replicas)))
        return sorted(picked, key=lambda r: loads[r] or 0)

    def routed(self, replica: Hashable, hashes: Sequence[int]) -> None:
        """``replica`` got a prompt with these blocks: it will hold them in its cache."""
        seen = self._blocks.setdefault(replica, OrderedDict())
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.max_blocks:
            seen.popitem(last=False)

    def forget(self, replica: Hashable) -> None:
        self._blocks.pop(replica, None)


def prompt_of(args: Sequence[Any]) -> Sequence[int]:
    """The prompt token ids of a routed ``generate(WireRequest)`` call, if it is one."""
    if args:
        tokens = getattr(args[0], "prompt_token_ids", None)
        if isinstance(tokens, list):
            return tokens
    return []
