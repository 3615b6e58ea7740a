"""The prefix-aware routing policy on a fake set of replicas."""

from __future__ import annotations

import random

from tokenmill.fleet.router import BLOCK, PrefixPolicy, block_hashes, prompt_of
from tokenmill.fleet.wire import WireRequest
from tokenmill.sampling.params import SamplingParams

SYSTEM = list(range(1000, 1000 + 8 * BLOCK))  # a 128-token shared system prompt


def prompt(tail: int, head: list[int] = SYSTEM) -> list[int]:
    return head + [tail] * (2 * BLOCK)


def policy(**kw: int) -> PrefixPolicy:
    return PrefixPolicy(rng=random.Random(0), **kw)


def test_block_hashes_are_chained_prefixes() -> None:
    a, b = block_hashes(prompt(1)), block_hashes(prompt(2))
    assert len(a) == 10 and a[:8] == b[:8] and a[8] != b[8]
    # Same block content after a different history: a different hash.
    shifted = block_hashes([7] * BLOCK + SYSTEM)
    assert not set(shifted[1:]) & set(a)
    assert block_hashes(list(range(BLOCK - 1))) == []  # no full block


def test_a_prompt_goes_where_its_prefix_went() -> None:
    p = policy()
    p.routed("r1", block_hashes(prompt(1)))
    p.routed("r2", block_hashes([5] * 200))
    loads = {"r0": 0, "r1": 2, "r2": 0}
    assert p.rank(block_hashes(prompt(9)), loads)[0] == ["r1"]
    assert p.match("r1", block_hashes(prompt(9))) == len(SYSTEM)
    assert p.prefix_routed == 1


def test_a_short_shared_prefix_is_not_worth_routing_for() -> None:
    p = policy(min_match=64)
    p.routed("r1", block_hashes(SYSTEM[: 3 * BLOCK] + [1] * 100))
    ranks = p.rank(block_hashes(SYSTEM[: 3 * BLOCK] + [2] * 100), {"r0": 0, "r1": 0})
    assert p.load_routed == 1 and len(ranks) == 1


def test_imbalanced_load_wins_over_the_prefix() -> None:
    p = PrefixPolicy(imbalance=4, ratio=1.0, rng=random.Random(0))
    p.routed("r1", block_hashes(prompt(1)))
    (two,) = p.rank(block_hashes(prompt(2)), {"r0": 0, "r1": 5})
    assert two == ["r0", "r1"]  # both picked (only two), the idle one first
    assert p.load_routed == 1
    # Busy fleets: a gap within the idlest replica's own load still follows the prefix.
    assert p.rank(block_hashes(prompt(2)), {"r0": 12, "r1": 20})[0] == ["r1"]
    (two,) = p.rank(block_hashes(prompt(2)), {"r0": 12, "r1": 25})
    assert two == ["r0", "r1"]


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    p = policy()
    loads = {f"r{i}": i for i in range(8)}
    for _ in range(50):
        (two,) = p.rank([], loads)
        assert len(two) == 2 and loads[two[0]] <= loads[two[1]]


def test_equal_matches_go_to_the_less_loaded_and_the_rest_follow() -> None:
    p = policy()
    for r in ("r1", "r2"):
        p.routed(r, block_hashes(prompt(1)))
    ranks = p.rank(block_hashes(prompt(3)), {"r0": 0, "r1": 2, "r2": 1})
    assert ranks[0] == ["r2", "r1"] and ranks[1] == ["r0"]


def test_forgetting_and_bounded_memory() -> None:
    p = policy(max_blocks=4)
    p.routed("r1", block_hashes(prompt(1)))  # 10 blocks: only the last 4 are kept
    assert p.match("r1", block_hashes(prompt(1))) == 0  # its leading blocks are gone
    p.routed("r1", block_hashes(SYSTEM[: 4 * BLOCK]))
    assert p.match("r1", block_hashes(SYSTEM)) == 4 * BLOCK
    p.forget("r1")
    assert p.match("r1", block_hashes(SYSTEM)) == 0


def test_prompt_of_reads_a_wire_request() -> None:
    wire = WireRequest("r", [1, 2, 3], SamplingParams(max_tokens=1))
    assert prompt_of([wire]) == [1, 2, 3]
    assert prompt_of([]) == [] and prompt_of(["not a request"]) == []
