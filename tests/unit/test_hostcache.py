"""The host-memory tier of the prefix cache: its bookkeeping, the scheduler's saves and
restores, and the engine on the fake runner giving the same outputs with less work."""

from __future__ import annotations

from tests.unit.test_engine import Harness
from tests.unit.test_scheduler import group, sample_all
from tokenmill.config import EngineConfig
from tokenmill.core.hostcache import HostCache
from tokenmill.core.plan import DropOp, SaveOp, SlotOp
from tokenmill.core.scheduler import MIN_SAVE, Scheduler
from tokenmill.core.sequence import SeqStatus


def test_best_finds_the_longest_shared_prefix() -> None:
    h = HostCache(1000)
    a, _ = h.add([1, 2, 3, 4, 5])
    b, _ = h.add([1, 2, 9, 9])
    assert h.best([1, 2, 3, 4, 7], limit=10) == (a, 4)
    assert h.best([1, 2, 9, 9, 9], limit=3) == (b, 3)
    assert h.best([8, 8], limit=10) == (None, 0)


def test_an_entry_that_is_a_prefix_of_a_new_one_is_dropped() -> None:
    h = HostCache(1000)
    short, _ = h.add([1, 2, 3])
    assert h.covers([1, 2]) and h.covers([1, 2, 3]) and not h.covers([1, 2, 3, 4])
    longer, dropped = h.add([1, 2, 3, 4])
    assert dropped == [short] and list(h.entries) == [longer] and h.tokens == 4


def test_least_recently_used_goes_first_and_pinned_never() -> None:
    h = HostCache(10)
    a, _ = h.add([1] * 4)
    b, _ = h.add([2] * 4)
    h.touch(a)  # a restored: b is now the oldest
    c, dropped = h.add([3] * 4)
    assert dropped == [b] and list(h.entries) == [a, c]
    d, dropped = h.add([4] * 6, pinned=a)
    assert dropped == [c] and list(h.entries) == [a, d] and h.tokens == 10
    assert h.add([5] * 7, pinned=a) == (None, [])  # cannot fit beside the pinned entry
    assert h.add([6] * 11) == (None, [])  # larger than the whole tier


def test_a_reused_slot_is_saved_and_restored_for_its_next_turn() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=1, max_batch_tokens=512), 10_000, host_tokens=10_000)
    first = group(200)
    s.add(first)
    sample_all(s, s.schedule())
    s.finish(first.seqs[0], SeqStatus.FINISHED_STOPPED)
    held = first.seqs[0].token_ids[:200]
    other = group(MIN_SAVE + 10)
    s.add(other)
    plan = s.schedule()
    (save,) = [op for op in plan.slot_ops if isinstance(op, SaveOp)]
    # The save comes before the slot is reused.
    assert plan.slot_ops == [save, SlotOp(0, 0)]
    assert s.host.entries[save.entry] == held
    sample_all(s, plan)
    s.finish(other.seqs[0], SeqStatus.FINISHED_STOPPED)
    turn2 = group(260, prefix=first.seqs[0].token_ids)  # the history plus a new message
    s.add(turn2)
    plan = s.schedule()
    restore = plan.slot_ops[-1]
    assert restore == SlotOp(0, 200, None, save.entry)  # `other` saved first, then restore
    assert isinstance(plan.slot_ops[0], SaveOp) and plan.slot_ops[0].entry != save.entry
    (chunk,) = plan.chunks
    assert chunk.start == 200 and turn2.seqs[0].num_cached == 200
    assert s.host.restores == 1


def test_short_prompts_and_an_off_tier_are_not_saved() -> None:
    for host_tokens, length in ((10_000, MIN_SAVE - 1), (0, 500)):
        s = Scheduler(EngineConfig(max_num_seqs=1), 10_000, host_tokens=host_tokens)
        first = group(length)
        s.add(first)
        sample_all(s, s.schedule())
        s.finish(first.seqs[0], SeqStatus.FINISHED_STOPPED)
        s.add(group(20))
        plan = s.schedule()
        assert not [op for op in plan.slot_ops if isinstance(op, SaveOp | DropOp)]


def _conversations(h: Harness, turns: int) -> tuple[dict[str, dict[int, str]], int]:
    """Six interleaved conversations on two slots: every turn resends the history (the
    previous prompt, the answer's tokens, a new message)."""
    histories = [[2 + (c * 11 + j) % 60 for j in range(80 + 5 * c)] for c in range(6)]
    texts: dict[str, dict[int, str]] = {}
    for t in range(turns):
        for c, history in enumerate(histories):
            h.submit(f"c{c}t{t}", history, max_tokens=8)
        h.run()
        for c, history in enumerate(histories):
            rid = f"c{c}t{t}"
            texts[rid] = h.texts(rid)
            answer = h.runner.tokenize(texts[rid][0], False, False)
            history += [*answer, 3 + t, 4 + c, 5]
    return texts, sum(h.runner.batch_sizes)


def test_conversations_give_the_same_text_with_less_work() -> None:
    with_host, work = _conversations(Harness(max_num_seqs=2, budget=64, n_ctx=1024), 4)
    slots_only, work_slots = _conversations(
        Harness(max_num_seqs=2, budget=64, n_ctx=1024, host_cache_mib=0), 4
    )
    no_cache, work_none = _conversations(
        Harness(max_num_seqs=2, budget=64, n_ctx=1024, prefix_cache=False), 4
    )
    assert with_host == slots_only == no_cache
    # Six conversations round-robin on two slots: a slot never holds a conversation by its
    # next turn, so slots alone save nothing here, and the host tier most of the work.
    assert work_slots == work_none and work < work_none / 3


def test_a_tier_too_small_for_anything_changes_nothing() -> None:
    h = Harness(max_num_seqs=2, budget=64, n_ctx=1024)
    h.engine.scheduler.host.capacity = 50  # below any history here
    tiny, _ = _conversations(h, 3)
    plain, _ = _conversations(Harness(max_num_seqs=2, budget=64, n_ctx=1024, host_cache_mib=0), 3)
    assert tiny == plain and not h.runner.host and h.runner.restores == 0
