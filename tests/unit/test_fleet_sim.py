"""The fleet simulator's engine model, prefix cache and routers (benchmarks/fleet_sim.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tokenmill.fleet.router import BLOCK, block_hashes


def _load() -> ModuleType:
    # benchmarks/ is not a package: load the script by path. Registered before it runs, as
    # dataclasses look their module up in sys.modules.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_sim.py"
    spec = importlib.util.spec_from_file_location("fleet_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fs = _load()


def turn(prompt: list[int], max_tokens: int = 4) -> fs.Turn:
    conv = fs.Conversation(index=0, seed=1, max_tokens=max_tokens, follow_ups=())
    return fs.Turn(conv, prompt, fs.extend_hashes(prompt, []), 0.0)


def run(rep: fs.Replica, now: float = 0.0) -> float:
    """Step the replica until it has nothing left; returns the time."""
    while rep.has_work:
        step = rep.plan(now)
        assert step is not None
        now = step.end
        rep.complete(step, now)
    return now


def test_step_time_interpolates_the_measured_decode_table() -> None:
    assert fs.decode_ms(0) == 0 and fs.decode_ms(1) == 7.5 and fs.decode_ms(8) == 48.6
    assert fs.decode_ms(3) == pytest.approx(20.0)  # halfway between 2 and 4 sequences
    assert fs.decode_ms(12) == pytest.approx(48.6 + (48.6 - 25.5))  # the last slope, onwards
    assert fs.step_ms(2, 100) == pytest.approx(14.5 + 100 * fs.PREFILL_MS_PER_TOKEN)


def test_hashes_extend_as_the_router_computes_them() -> None:
    tokens = list(range(10 * BLOCK + 5))
    assert fs.extend_hashes(tokens, block_hashes(tokens[:37])) == block_hashes(tokens)
    assert fs.tokenize("Explain jazz.") == fs.tokenize("Explain jazz.")  # stable ids


def test_next_turn_extends_the_previous_prompt_and_answer() -> None:
    conv = fs.Conversation(index=3, seed=1, max_tokens=8, follow_ups=("Why is that?",))
    body = {"messages": [{"role": "user", "content": "Explain jazz to a ten-year-old."}]}
    first = conv.first(body, 0.0)
    second = conv.next(first, 1.0)
    assert second is not None and conv.next(second, 2.0) is None
    assert second.prompt[: len(first.prompt) + 8] == first.prompt + first.answer
    assert second.hashes == block_hashes(second.prompt)
    assert second.hashes[: len(first.history_hashes)] == first.history_hashes
    # The answer depends on the seed, the conversation and the turn only.
    assert first.answer == fs.answer_tokens(1, 3, 0, 8) != second.answer


def test_cached_tokens_come_from_slots_then_from_the_host_tier() -> None:
    rep = fs.Replica(host_cache_tokens=1000, max_num_seqs=1)
    a = list(range(100))  # 6 whole blocks
    rep.waiting.append(turn(a))
    run(rep)
    # A prompt sharing 70 tokens reuses 4 whole blocks of the slot's KV.
    b = turn(a[:70] + [999] * 50)
    assert rep.lookup(b.hashes, len(b.prompt)) == (64, False, False)
    # The same prompt again: all but the last block (one token at least is computed).
    again = turn(a)
    assert rep.lookup(again.hashes, len(again.prompt)) == (96, False, False)
    # Another prompt takes the only slot: A's blocks move to the host tier.
    rep.waiting.append(turn([7] * 40))
    run(rep)
    assert rep.lookup(b.hashes, len(b.prompt)) == (64, True, False)
    rep.waiting.append(b)
    step = rep.plan(0.0)
    assert step is not None and step.chunks[0][1] == len(b.prompt) - 64
    assert step.ms == pytest.approx(fs.step_ms(0, 56, 64))  # prefill the rest, restore 64
    assert rep.host_hits == 1


def test_host_tier_evicts_least_recently_used_chains_from_their_tails() -> None:
    rep = fs.Replica(host_cache_tokens=4 * BLOCK)
    old, new = block_hashes(list(range(3 * BLOCK))), block_hashes([5] * (2 * BLOCK))
    rep.save(old)
    rep.save(new)
    # The oldest chain loses its last block first: what stays is still a reachable prefix.
    assert list(rep.host) == [old[1], old[0], new[1], new[0]] and rep.evicted_blocks == 1


def test_a_request_waits_for_a_prefix_another_is_computing() -> None:
    rep = fs.Replica(host_cache_tokens=0, max_num_seqs=2, max_batch_tokens=64)
    prompt = list(range(200))
    rep.waiting.extend([turn(prompt), turn(prompt)])
    admitted: dict[int, int] = {}  # id(seq) -> cached tokens
    now = 0.0
    while rep.has_work:
        step = rep.plan(now)
        assert step is not None
        admitted.update((id(s), s.cached) for s, _ in step.chunks)
        if len(admitted) == 1:
            assert len(rep.waiting) == 1  # not admitted while the first computes the prefix
        now = step.end
        rep.complete(step, now)
    # The second reused all the first computed: every whole block but the last token's.
    assert sorted(admitted.values()) == [0, 192] and not rep.pending


def test_decode_runs_are_cut_when_a_request_could_start() -> None:
    rep = fs.Replica(host_cache_tokens=0)
    rep.waiting.append(turn(list(range(20)), max_tokens=10))
    prefill = rep.plan(0.0)
    assert prefill is not None
    rep.complete(prefill, prefill.end)
    step = rep.step = rep.plan(prefill.end)
    assert step is not None and step.steps == 9 and step.interruptible
    rep.waiting.append(turn([1] * 20))
    assert rep.cut(step.start + 2.5 * step.ms)  # during the third step: it ends after it
    assert step.steps == 3
    rep.complete(step, step.end)
    assert rep.running[0].generated == 4


def test_prefix_routing_keeps_more_prefixes_cached_than_round_robin() -> None:
    # Few clients: loads stay balanced, so the policy can follow the shared system prompt.
    small = {"requests_per_replica": 2, "clients_per_replica": 1}
    rr = fs.simulate("shared-prefix", 8, "round-robin", 1, **small)
    px = fs.simulate("shared-prefix", 8, "prefix", 1, **small)
    assert px["hit_rate"] > rr["hit_rate"] and px["prefix_routed"] > 0
    # Conversations: the next turn finds its history where the last one ran.
    turns = {"requests_per_replica": 8, "clients_per_replica": 4}
    rr = fs.simulate("multi-turn", 8, "round-robin", 1, **turns)
    px = fs.simulate("multi-turn", 8, "prefix", 1, **turns)
    assert px["hit_rate"] > rr["hit_rate"] + 0.1


def test_a_seed_gives_the_same_rows_and_every_policy_the_same_workload() -> None:
    kw = {"requests_per_replica": 4, "clients_per_replica": 4}
    rows = {p: fs.simulate("multi-turn", 4, p, 2, **kw) for p in fs.POLICIES}
    assert fs.simulate("multi-turn", 4, "pow2", 2, **kw) == rows["pow2"]
    for key in ("turns", "prompt_tokens", "output_tokens"):
        assert len({r[key] for r in rows.values()}) == 1
    assert rows["round-robin"]["balance"] == pytest.approx(1.0, abs=0.1)
    assert "| multi-turn | 4 | prefix |" in fs.markdown_table(list(rows.values()))
