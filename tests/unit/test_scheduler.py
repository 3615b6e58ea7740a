"""The scheduler alone: admission, budget, chunked prefill, forks, preemption, priorities."""

from __future__ import annotations

from tokenmill.config import EngineConfig
from tokenmill.core.plan import SchedulerOutput, SeqUpdate
from tokenmill.core.scheduler import MIN_COPY_GAIN, Scheduler
from tokenmill.core.sequence import SeqStatus, Sequence, SequenceGroup

_ids = iter(range(10**6))


def group(
    prompt_len: int,
    n: int = 1,
    priority: int = 0,
    arrival: float = 0.0,
    prefix: list[int] | None = None,
) -> SequenceGroup:
    """A request whose prompt is ``prefix`` followed by tokens no other request has."""
    base = next(_ids) * 10_000
    tokens = (prefix or []) + list(range(base, base + prompt_len - len(prefix or [])))
    g = SequenceGroup(f"r{base}", len(tokens), priority, arrival)
    for i in range(n):
        g.seqs.append(Sequence(next(_ids), i, g, list(tokens), max_tokens=100))
    return g


def sample_all(sched: Scheduler, plan: SchedulerOutput) -> None:
    """Pretend the model sampled one token for every sequence that asked."""
    updates = [SeqUpdate(c.seq, [7]) for c in plan.chunks if c.sample]
    updates += [SeqUpdate(child, [7]) for _, child in plan.forks]
    assert sched.update_from_output(plan, updates) == []


def cells_in_use(sched: Scheduler) -> int:
    groups = {id(s.group): s.group for s in sched.running}
    return sum(s.own_cells for s in sched.running) + sum(g.shared_cells for g in groups.values())


def test_admits_up_to_max_num_seqs_and_next_joins_when_one_leaves() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=2, max_batch_tokens=64), kv_cells=1000)
    a, b, c = group(4, arrival=1), group(4, arrival=2), group(4, arrival=3)
    for g in (a, b, c):
        s.add(g)
    plan = s.schedule()
    assert {ch.seq.group.request_id for ch in plan.chunks} == {a.request_id, b.request_id}
    assert c.seqs[0].status is SeqStatus.WAITING
    sample_all(s, plan)
    a_slot = a.seqs[0].slot
    s.finish(a.seqs[0], SeqStatus.FINISHED_STOPPED)
    plan = s.schedule()
    # c takes a's freed slot and drops its stale KV (no shared prefix here).
    assert [(op.dst, op.keep, op.src) for op in plan.slot_ops] == [(a_slot, 0, None)]
    assert {ch.seq.group.request_id for ch in plan.chunks} == {b.request_id, c.request_id}


def test_budget_is_honoured_and_long_prompts_are_chunked() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=4, max_batch_tokens=32), kv_cells=10_000)
    g = group(100)
    s.add(g)
    sizes = []
    while g.seqs[0].num_uncomputed > 0:
        plan = s.schedule()
        assert plan.num_tokens <= 32
        sizes.append(plan.num_tokens)
    assert sizes == [32, 32, 32, 4]
    assert plan.chunks[-1].sample


def test_decodes_are_never_starved_by_a_long_prefill() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=4, max_batch_tokens=16), kv_cells=10_000)
    decoders = [group(3, arrival=i) for i in range(3)]
    for g in decoders:
        s.add(g)
    sample_all(s, s.schedule())
    s.add(group(500, arrival=10))
    for _ in range(10):
        plan = s.schedule()
        decoding = {c.seq.seq_id for c in plan.chunks if c.num_tokens == 1}
        assert decoding == {g.seqs[0].seq_id for g in decoders}
        assert plan.num_tokens == 16  # the rest of the budget went to the prompt
        sample_all(s, plan)


def test_n_choices_share_the_prompt_through_forks() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=4, max_batch_tokens=64), kv_cells=1000)
    g = group(10, n=3)
    s.add(g)
    plan = s.schedule()
    assert [c.seq.index for c in plan.chunks] == [0]  # only the leader computes the prompt
    assert [(a.index, b.index) for a, b in plan.forks] == [(0, 1), (0, 2)]
    assert s.used_cells == 10 == cells_in_use(s)
    sample_all(s, plan)
    plan = s.schedule()
    assert sorted(c.seq.index for c in plan.chunks) == [0, 1, 2]
    assert s.used_cells == 13 == cells_in_use(s)
    for seq in g.seqs:
        s.finish(seq, SeqStatus.FINISHED_STOPPED)
    assert s.used_cells == 0


def test_kv_exhaustion_preempts_the_newest_and_it_resumes() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=4, max_batch_tokens=64), kv_cells=24)
    old, new = group(10, arrival=1), group(10, arrival=2)
    s.add(old)
    s.add(new)
    sample_all(s, s.schedule())
    preempted = False
    for _ in range(6):
        plan = s.schedule()
        preempted |= any(p is new.seqs[0] for p in plan.preempted)
        assert s.used_cells <= 24
        assert s.used_cells == cells_in_use(s)
        sample_all(s, plan)
    assert preempted
    assert old.seqs[0].status is SeqStatus.RUNNING
    s.finish(old.seqs[0], SeqStatus.FINISHED_STOPPED)
    plan = s.schedule()
    resumed = [c for c in plan.chunks if c.seq is new.seqs[0]]
    # Recomputed from its tokens, output included; its old slot still caches what it had.
    assert resumed and resumed[0].start + resumed[0].num_tokens == len(new.seqs[0].token_ids)
    assert [(op.keep, op.src) for op in plan.slot_ops] == [(resumed[0].start, None)]


def test_priority_orders_admission_and_fcfs_within_a_priority() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=1, max_batch_tokens=64), kv_cells=1000)
    low = group(2, priority=5, arrival=1)
    high_late = group(2, priority=0, arrival=3)
    high_early = group(2, priority=0, arrival=2)
    for g in (low, high_late, high_early):
        s.add(g)
    order = []
    for _ in range(3):
        plan = s.schedule()
        seq = plan.chunks[0].seq
        order.append(seq.group)
        s.finish(seq, SeqStatus.FINISHED_STOPPED)
    assert order == [high_early, high_late, low]


def test_abort_of_waiting_and_running_frees_everything() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=1, max_batch_tokens=64), kv_cells=1000)
    a, b = group(5, n=1, arrival=1), group(5, arrival=2)
    s.add(a)
    s.add(b)
    s.schedule()
    s.finish_group(b, SeqStatus.FINISHED_ABORTED)
    s.finish_group(a, SeqStatus.FINISHED_ABORTED)
    assert not s.has_work and s.used_cells == 0 and len(s.free_slots) == 1


def test_a_finished_prefix_is_reused_from_its_slot() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=2, max_batch_tokens=512), kv_cells=10_000)
    system = list(range(7, 107))  # a 100-token shared system prompt
    first = group(120, prefix=system)
    s.add(first)
    sample_all(s, s.schedule())
    s.finish(first.seqs[0], SeqStatus.FINISHED_STOPPED)
    second = group(130, prefix=system)
    s.add(second)
    plan = s.schedule()
    (chunk,) = plan.chunks
    assert chunk.start == 100 and chunk.num_tokens == 30  # only the new part is computed
    assert second.seqs[0].num_cached == 100
    assert [(op.keep, op.src) for op in plan.slot_ops] == [(100, None)]


def test_concurrent_requests_compute_a_shared_prefix_once() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=4, max_batch_tokens=64), kv_cells=10_000)
    system = list(range(7, 207))  # 200 tokens: several steps of prefill
    a, b = group(210, prefix=system, arrival=1), group(215, prefix=system, arrival=2)
    s.add(a)
    s.add(b)
    computed = 0
    copied = []
    for _ in range(20):
        plan = s.schedule()
        computed += sum(c.num_tokens for c in plan.chunks if c.seq.index == 0 and c.num_tokens > 1)
        copied += [op for op in plan.slot_ops if op.src is not None]
        sample_all(s, plan)
        if b.seqs[0].num_output:
            break
    reused = b.seqs[0].num_cached
    # b waited while a computed the prefix, then copied it (waiting for the last few tokens
    # would not have been worth a step).
    assert 200 - MIN_COPY_GAIN < reused <= 200
    assert [(op.src, op.keep) for op in copied] == [(a.seqs[0].slot, reused)]
    assert computed == 210 + 215 - reused


def test_prompt_logprobs_bypass_the_cache() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=1, max_batch_tokens=512), kv_cells=10_000)
    first = group(50)
    s.add(first)
    sample_all(s, s.schedule())
    s.finish(first.seqs[0], SeqStatus.FINISHED_STOPPED)
    again = group(50, prefix=first.seqs[0].token_ids[:50])
    again.seqs[0].want_prompt_logprobs = True
    s.add(again)
    plan = s.schedule()
    assert plan.chunks[0].start == 0 and plan.slot_ops[0].keep == 0


def test_lowest_free_slot_is_taken_and_a_better_cache_copied_into_it() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=3, max_batch_tokens=512), kv_cells=10_000)
    system = list(range(7, 107))
    a, b, c = group(5, arrival=1), group(120, prefix=system, arrival=2), group(5, arrival=3)
    for g in (a, b, c):
        s.add(g)
    sample_all(s, s.schedule())
    assert [g.seqs[0].slot for g in (a, b, c)] == [0, 1, 2]
    s.finish(a.seqs[0], SeqStatus.FINISHED_STOPPED)
    s.finish(b.seqs[0], SeqStatus.FINISHED_STOPPED)
    d = group(130, prefix=system, arrival=4)
    s.add(d)
    plan = s.schedule()
    # Slot 0 keeps the running batch compact; slot 1's cached system prompt is copied into it.
    assert d.seqs[0].slot == 0
    assert [(op.dst, op.keep, op.src) for op in plan.slot_ops] == [(0, 100, 1)]


def test_aging_lets_a_low_priority_request_through_a_stream_of_high_ones() -> None:
    now = [0.0]
    config = EngineConfig(max_num_seqs=1, max_batch_tokens=64, aging_seconds=1.0)
    s = Scheduler(config, kv_cells=1000, clock=lambda: now[0])
    low = group(2, priority=3, arrival=0.0)
    s.add(low)
    admitted = []
    for t in range(8):
        now[0] = float(t)
        s.add(group(2, priority=0, arrival=float(t)))  # a new high-priority request every second
        plan = s.schedule()
        seq = plan.chunks[0].seq
        admitted.append(seq.group.priority)
        s.finish(seq, SeqStatus.FINISHED_STOPPED)
    # At t=0..2 the fresh high-priority work goes first; by t=3 the low one has aged 3 levels and,
    # being older, wins the tie (FCFS within an effective priority).
    assert admitted[:3] == [0, 0, 0]
    assert 3 in admitted[3:5]


def test_update_from_output_settles_drafts_appends_and_finishes() -> None:
    config = EngineConfig(max_num_seqs=2, max_batch_tokens=64, spec_max_seqs=2)
    s = Scheduler(config, kv_cells=1000)
    a, b = group(5), group(5)
    s.add(a)
    s.add(b)
    sample_all(s, s.schedule())  # both prompts, one token each
    sa, sb = a.seqs[0], b.seqs[0]
    plan = s.schedule({sa.seq_id: [8, 9, 10], sb.seq_id: [4]})
    assert [c.num_draft for c in plan.chunks] == [3, 1]
    used, b_slot = s.used_cells, sb.slot
    # a: the model agreed with two of its three draft tokens (8, 9), then sampled 11;
    # b: its draft was wrong, and its new token ends it.
    trims = s.update_from_output(
        plan,
        [SeqUpdate(sa, [8, 9, 11], accepted_draft=2),
         SeqUpdate(sb, [5], accepted_draft=0, finish=SeqStatus.FINISHED_STOPPED)],
    )  # fmt: skip
    assert sa.token_ids[-4:] == [7, 8, 9, 11] and sa.draft == []
    assert sa.num_computed == len(sa.token_ids) - 1  # the rejected draft's cell is given back
    assert [(t.dst, t.keep) for t in trims] == [(sa.slot, sa.num_computed), (b_slot, 6)]
    assert sb.status is SeqStatus.FINISHED_STOPPED and sb.token_ids[-2:] == [7, 5]
    assert s.used_cells == used - 1 - 1 - 6  # a's rejected draft, b's draft and b's cells
    assert s.running == [sa]
    # An update for a sequence that finished meanwhile (its request failed) changes nothing.
    s.finish(sa, SeqStatus.FINISHED_ERROR)
    s.update_from_output(plan, [SeqUpdate(sa, [1, 2, 3])])
    assert sa.token_ids[-1] == 11


def test_prompt_logprobs_are_asked_for_until_the_prompt_has_run() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=1, max_batch_tokens=16), kv_cells=1000)
    g = group(40)
    g.seqs[0].want_prompt_logprobs = True
    s.add(g)
    plans = []
    while not any(c.sample for p in plans for c in p.chunks):
        plans.append(s.schedule())
        s.update_from_output(plans[-1], [])
    assert all(c.all_logits for p in plans for c in p.chunks)
    assert g.seqs[0].want_prompt_logprobs is False  # a recompute would not redo them


def test_kv_full_sends_the_batch_back_and_shrinks_the_cells() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=2, max_batch_tokens=64), kv_cells=1600)
    a = group(5, n=2)
    s.add(a)
    plan = s.schedule()
    assert plan.forks  # the child would have been forked from this batch
    slots = [seq.slot for seq in a.seqs]
    s.on_kv_full(plan)
    s.forget([slot for slot in slots if slot is not None])  # as the engine does: KV unknown
    assert s.kv_cells == 1500 and s.used_cells == 0 and s.running == []
    assert all(seq.status is SeqStatus.WAITING for seq in a.seqs)
    plan = s.schedule()  # recomputed from the start
    assert plan.chunks[0].start == 0 and plan.chunks[0].num_tokens == 5


def test_batch_lines_give_their_slots_to_higher_priority_work() -> None:
    s = Scheduler(EngineConfig(max_num_seqs=2, max_batch_tokens=128), kv_cells=1000,
                  host_tokens=1000)  # fmt: skip
    first, second = group(80, priority=3, arrival=1), group(8, priority=3, arrival=2)
    flex = group(4, priority=2, arrival=0)
    for g in (flex, first):
        s.add(g)
    sample_all(s, s.schedule())  # flex (2) and a batch line (3) take both slots
    s.add(second)
    plan = s.schedule()
    assert not plan.preempted  # batch does not preempt batch
    sample_all(s, plan)
    urgent = group(4, priority=0, arrival=3)
    s.add(urgent)
    plan = s.schedule()
    # The batch line gives way, not the flex request (above yield_priority).
    assert plan.preempted == [first.seqs[0]]
    assert urgent.seqs[0] in [c.seq for c in plan.chunks]
    assert flex.seqs[0].status is SeqStatus.RUNNING
    assert s.used_cells == cells_in_use(s)
    sample_all(s, plan)
    s.finish(urgent.seqs[0], SeqStatus.FINISHED_STOPPED)
    s.finish(flex.seqs[0], SeqStatus.FINISHED_STOPPED)
    plan = s.schedule()  # the batch line resumes from its KV, saved to host memory
    resumed = [c for c in plan.chunks if c.seq is first.seqs[0]]
    assert resumed and resumed[0].start >= 80
