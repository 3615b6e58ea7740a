"""The step scheduler: which tokens of which sequences go into the next batch.

Pure Python and model-free, so it is tested on CPU with fake sequences. Each step has a token
budget. Running decodes are served first (one token each), then prompt chunks of running
sequences, then newly admitted ones: a long prompt is cut into chunks and never stalls the
others' streaming. Admission is FCFS within a priority and needs a free KV slot and room for the
whole prompt; when decoding runs out of KV cells the newest, lowest-priority sequence is
preempted and later recomputed from its tokens. Sequences at the lowest priorities (batch
lines) also give their slot to higher-priority work that waits for one.

Prefix cache: a slot keeps its KV after its sequence leaves, and remembers the tokens it holds.
A new sequence takes the free slot sharing the longest prefix with it and computes only the
rest; when another slot (free or running) holds a clearly longer prefix, that slot's KV is
copied in first. A sequence whose prefix another one is still computing waits for it a step
or two instead of computing the same tokens again.

Before a free slot's KV is overwritten, it is saved to host memory when that loses enough
tokens (core/hostcache.py), and a prompt sharing a clearly longer prefix with a saved entry
than with any slot gets that entry restored into its slot instead.

A sequence always takes the lowest free slot, copying in a better cache held by another slot:
llama.cpp decodes only consecutive sequence ids in one pass, so compact slots are much faster
(measured, 4 sequences: 31 ms/step in slots 0-3, 50 ms in slots 0, 2, 5, 7). Caches in high
free slots therefore live longest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from tokenmill.config import EngineConfig
from tokenmill.core.hostcache import HostCache
from tokenmill.core.plan import DropOp, SaveOp, ScheduledChunk, SchedulerOutput, SeqUpdate, SlotOp
from tokenmill.core.prefix import common_prefix_len
from tokenmill.core.sequence import SeqStatus, Sequence, SequenceGroup

# Copying another slot's KV moves its whole stream; below this many reused tokens,
# computing them is about as cheap.
MIN_COPY_GAIN = 32
# Reusing a slot that loses fewer tokens of KV than this does not save them to host memory:
# recomputing a short prompt costs less than the RAM its state would take from longer ones.
MIN_SAVE = 64


class Scheduler:
    """Owns the waiting queue, the running set, KV slots and the count of used KV cells."""

    def __init__(
        self,
        config: EngineConfig,
        kv_cells: int,
        clock: Callable[[], float] = time.monotonic,
        host_tokens: int = 0,
    ) -> None:
        self.config = config
        self.kv_cells = kv_cells  # usable cells: shrinks if llama.cpp finds less room
        self.max_batch_tokens = config.max_batch_tokens
        self.waiting: list[Sequence] = []  # admission order: see _admission_key
        self.clock = clock
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(config.max_num_seqs))
        self.slot_tokens: dict[int, list[int]] = {}  # what a free slot's KV holds
        self.host = HostCache(host_tokens if config.prefix_cache else 0)
        self.used_cells = 0
        self.num_preemptions = 0  # lifetime count, for stats and tests

    # -- queue management -------------------------------------------------------------------

    def add(self, group: SequenceGroup) -> None:
        """Queue a request. Its first sequence computes the prompt; the rest wait to fork."""
        leader, *children = group.seqs
        for child in children:
            child.awaiting_fork = True
        self._enqueue(leader)

    def finish(self, seq: Sequence, status: SeqStatus) -> None:
        """Take a sequence out for good (stopped, length, aborted, error) and free its KV."""
        if seq.status.finished:
            return
        if seq.status is SeqStatus.RUNNING:
            self._release(seq)
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = status
        seq.awaiting_fork = False

    def forget(self, slots: list[int]) -> None:
        """These slots' KV is not what their sequences believed (a batch failed): never reuse
        it. Call after the sequences have been finished or preempted."""
        for slot in slots:
            if slot in self.slot_tokens:
                self.slot_tokens[slot] = []

    def update_from_output(self, plan: SchedulerOutput, updates: list[SeqUpdate]) -> list[SlotOp]:
        """Apply a step's results: prompt logprobs taken, drafts settled, tokens appended,
        finished sequences out. Returns the trims the runner must apply to drop the KV of
        rejected draft tokens. Updates of sequences finished meanwhile (failed) are ignored."""
        for c in plan.chunks:
            if c.all_logits and c.start + c.num_tokens >= c.seq.prompt_len:
                c.seq.want_prompt_logprobs = False  # a recompute after preemption skips them
        trims: list[SlotOp] = []
        for u in updates:
            seq = u.seq
            if seq.status.finished:
                continue
            if seq.draft:
                rejected = len(seq.draft) - u.accepted_draft
                seq.num_computed -= rejected
                self.used_cells -= rejected
                seq.draft = []
                if rejected and seq.slot is not None:
                    trims.append(SlotOp(seq.slot, seq.num_computed))
            seq.token_ids.extend(u.tokens)
            if u.finish is not None:
                self.finish(seq, u.finish)
        return trims

    def on_kv_full(self, plan: SchedulerOutput) -> None:
        """llama.cpp found no room for this batch (fragmentation our count cannot see): its
        sequences go back to waiting, to be recomputed, and the usable cells shrink a little
        so later batches fit what the cache can really hold."""
        # Children forked from this batch never got their copy of the prompt: they go too.
        for seq in [c.seq for c in plan.chunks] + [child for _, child in plan.forks]:
            if seq.status is SeqStatus.RUNNING:
                self._preempt(seq, SchedulerOutput())
        self.kv_cells = max(self.kv_cells * 15 // 16, 1)

    def finish_group(self, group: SequenceGroup, status: SeqStatus) -> None:
        for seq in group.seqs:
            self.finish(seq, status)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def free_cells(self) -> int:
        return self.kv_cells - self.used_cells

    # -- the step ---------------------------------------------------------------------------

    def schedule(self, drafts: Mapping[int, list[int]] | None = None) -> SchedulerOutput:
        """The next batch. ``drafts``: speculative tokens proposed per running ``seq_id``
        (the scheduler may cut them to fit)."""
        if drafts is not None:
            for seq in self.running:
                seq.draft = list(drafts.get(seq.seq_id, ()))
        out = SchedulerOutput()
        self._yield_slots(out)
        budget = self.max_batch_tokens
        scheduled: set[int] = set()
        ordered = sorted(self.running, key=lambda s: s.sort_key)
        # KV that exists before this batch runs: what later admissions may copy from.
        kv_before = {s.slot: s.num_computed for s in ordered if s.slot is not None}
        # Decodes first: every streaming sequence advances one token per step.
        decoding = [s for s in ordered if not s.awaiting_fork and s.num_uncomputed == 1]
        # Verifying drafts makes a sequence a multi-token chunk, which llama.cpp cannot fuse
        # with other decodes: speculate only while this few sequences are decoding.
        speculate = len(decoding) <= self.config.spec_max_seqs
        for i, seq in enumerate(decoding):
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING:  # preempted to make room for an earlier one
                continue
            later = len(decoding) - i - 1  # each later decode keeps one token and one cell
            k = min(len(seq.draft), budget - 1 - later, self.free_cells - 1 - later)
            budget -= self._schedule_chunk(
                seq, budget, scheduled, out, draft=k if speculate and k > 0 else 0
            )
        # Then prompt chunks of sequences already admitted.
        for seq in ordered:
            if budget == 0:
                break
            if seq.status is SeqStatus.RUNNING and not seq.awaiting_fork and seq.num_uncomputed > 1:
                budget -= self._schedule_chunk(seq, budget, scheduled, out)
        # Then admit new work with what is left, best effective priority first.
        now = self.clock()
        self.waiting.sort(key=lambda s: self._admission_key(s, now))
        while budget > 0 and self.waiting and self._admit(self.waiting[0], kv_before, out):
            used = self._schedule_chunk(self.waiting.pop(0), budget, scheduled, out)
            if used == 0:  # it could not get KV cells after all: stop admitting this step
                break
            budget -= used
        return out

    def _admit(self, seq: Sequence, kv_before: dict[int, int], out: SchedulerOutput) -> bool:
        children = self._fork_children(seq)
        if len(self.free_slots) < 1 + len(children):
            return False
        # The whole prompt must fit now, or admitting it only leads to preemption; an idle
        # engine takes it anyway since nothing else could make room.
        if self.running and self.free_cells < seq.num_uncomputed + len(children):
            return False
        # Prompt logprobs need logits at every prompt position, so nothing can be reused.
        if self.config.prefix_cache and not seq.want_prompt_logprobs:
            slot, keep, src, entry = self._place(seq, kv_before)
            if self._prefix_in_progress(seq, kv_before, keep):
                return False
        else:
            slot, keep, src, entry = min(self.free_slots), 0, None, None
        own_kept = keep if src is None and entry is None else 0
        self._save_held(slot, own_kept, entry, out)
        if entry is not None:
            self.host.touch(entry)
        self._take_slot(seq, slot)
        out.slot_ops.append(SlotOp(slot, keep, src, entry))
        seq.num_computed = keep
        self.used_cells += keep
        if seq.num_preemptions == 0:
            seq.num_cached = keep
        for child in children:
            # A fork overwrites the child's whole stream (saved first if worth keeping).
            child_slot = min(self.free_slots)
            self._save_held(child_slot, 0, None, out)
            self._take_slot(child, child_slot)
        return True

    def _save_held(self, slot: int, kept: int, pinned: int | None, out: SchedulerOutput) -> None:
        """``slot`` is about to be reused keeping ``kept`` of its tokens: save its KV to host
        memory first if that loses at least ``MIN_SAVE`` tokens not saved already. Entry
        ``pinned`` (restored by the same admission) is never dropped to make room."""
        held = self.slot_tokens.get(slot)
        if not held or len(held) - kept < MIN_SAVE or not self.host.capacity:
            return
        if self.host.covers(held):
            return
        entry, dropped = self.host.add(held, pinned)
        out.slot_ops.extend(DropOp(e) for e in dropped)
        if entry is not None:
            out.slot_ops.append(SaveOp(slot, entry))

    def _take_slot(self, seq: Sequence, slot: int) -> None:
        self.free_slots.remove(slot)
        self.slot_tokens.pop(slot, None)
        seq.slot = slot
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def _place(
        self, seq: Sequence, kv_before: dict[int, int]
    ) -> tuple[int, int, int | None, int | None]:
        """Choose a slot for ``seq``: ``(slot, tokens of KV to keep, slot to copy from, host
        entry to restore from)``.

        The slot is the lowest free one; KV worth more than a copy is copied in from the free
        or running slot, or restored from the host entry, sharing the longest prefix with
        ``seq``.
        """
        tokens = seq.token_ids
        limit = len(tokens) - 1  # at least one token is computed, for its logits
        dst = min(self.free_slots)
        own = common_prefix_len(self.slot_tokens.get(dst, []), tokens, limit)
        best_src, best_len = None, 0
        for slot in self.free_slots:
            if slot != dst:
                n = common_prefix_len(self.slot_tokens.get(slot, []), tokens, limit)
                if n > best_len:
                    best_src, best_len = slot, n
        for other in self.running:
            held = kv_before.get(other.slot) if other.slot is not None else None
            if held:
                n = common_prefix_len(other.token_ids, tokens, min(limit, held))
                if n > best_len:
                    best_src, best_len = other.slot, n
        entry, host_len = self.host.best(tokens, limit) if self.host.entries else (None, 0)
        if entry is not None and host_len > best_len and host_len >= own + MIN_COPY_GAIN:
            return dst, host_len, None, entry
        if best_src is not None and best_len >= own + MIN_COPY_GAIN:
            return dst, best_len, best_src, None
        return dst, own, None, None

    def _prefix_in_progress(self, seq: Sequence, kv_before: dict[int, int], have: int) -> bool:
        """Is a running sequence still computing a prefix of ``seq`` clearly longer than the
        ``have`` tokens available now? Then waiting a step or two beats computing it twice."""
        limit = len(seq.token_ids) - 1
        for other in self.running:
            if other.awaiting_fork or other.slot is None:
                continue
            shared = common_prefix_len(other.token_ids, seq.token_ids, limit)
            if shared >= have + MIN_COPY_GAIN and kv_before.get(other.slot, 0) < shared:
                return True
        return False

    def _schedule_chunk(
        self,
        seq: Sequence,
        budget: int,
        scheduled: set[int],
        out: SchedulerOutput,
        draft: int = 0,
    ) -> int:
        """Put the next chunk of ``seq`` (plus ``draft`` speculative tokens) in the batch;
        return the tokens used (0 if preempted)."""
        n = min(seq.num_uncomputed, budget)
        if not self._make_room(n + draft, seq, scheduled, out):
            return 0
        start = seq.num_computed
        if seq.group.first_scheduled is None:
            seq.group.first_scheduled = self.clock()
        done = start + n == len(seq.token_ids)
        del seq.draft[draft:]
        out.chunks.append(
            ScheduledChunk(
                seq=seq,
                start=start,
                num_tokens=n + draft,
                sample=done,
                all_logits=seq.want_prompt_logprobs and start < seq.prompt_len,
                num_draft=draft,
            )
        )
        n += draft
        seq.num_computed += n
        self.used_cells += n
        scheduled.add(seq.seq_id)
        if done:
            self._fork(seq, out)
        return n

    def _fork(self, leader: Sequence, out: SchedulerOutput) -> None:
        children = self._fork_children(leader)
        if not children:
            return
        group = leader.group
        # The prompt's cells move from the leader's own count to the group's shared count.
        group.shared_cells = group.prompt_len
        group.shared_holders = 1 + len(children)
        leader.shared_prefix = group.prompt_len
        for child in children:
            child.awaiting_fork = False
            child.num_computed = child.shared_prefix = group.prompt_len
            out.forks.append((leader, child))

    def _fork_children(self, seq: Sequence) -> list[Sequence]:
        if seq.index != 0 or seq.num_output > 0:
            return []
        return [c for c in seq.group.seqs if c.awaiting_fork and c is not seq]

    # -- KV accounting and preemption -------------------------------------------------------

    def _make_room(self, n: int, seq: Sequence, scheduled: set[int], out: SchedulerOutput) -> bool:
        """Free ``n`` cells by preempting the newest unscheduled sequences, perhaps ``seq``."""
        while self.free_cells < n:
            victims = [
                s
                for s in self.running
                if s.seq_id not in scheduled and not s.awaiting_fork and s.num_computed > 0
            ]
            if not victims:
                victims = [seq]
            victim = max(victims, key=lambda s: s.sort_key)
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _yield_slots(self, out: SchedulerOutput) -> None:
        """Slots for waiting work of a higher priority, taken from running sequences at
        ``yield_priority`` or below (batch lines), newest first. Their KV stays in the slot's
        cache (saved to host memory before the slot is reused), so they resume cheaply."""
        floor = self.config.yield_priority
        victims = [s for s in self.running if s.group.priority >= floor and not s.awaiting_fork]
        if not victims:  # the common case: nothing to yield, nothing more to look at
            return
        urgent = [s.group.priority for s in self.waiting if s.group.priority < floor]
        if not urgent:
            return
        need = len(urgent) - len(self.free_slots)
        victims = [s for s in victims if s.group.priority > min(urgent)]
        victims.sort(key=lambda s: s.sort_key, reverse=True)  # lowest priority, newest first
        for victim in victims:
            if need <= 0:
                return
            need -= 1 + len(self._fork_children(victim))
            self._preempt(victim, out)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self._release(seq)
        self.running.remove(seq)
        # Children still waiting for this leader's prompt give their slots back too.
        for child in self._fork_children(seq):
            self._release(child)
            self.running.remove(child)
            child.status = SeqStatus.WAITING
            child.awaiting_fork = True
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        out.preempted.append(seq)
        self._enqueue(seq)

    def _release(self, seq: Sequence) -> None:
        self.used_cells -= seq.own_cells
        if seq.shared_prefix:
            group = seq.group
            group.shared_holders -= 1
            if group.shared_holders == 0:
                self.used_cells -= group.shared_cells
                group.shared_cells = 0
            seq.shared_prefix = 0
        if seq.slot is not None:
            # The slot keeps its KV as a cache of these tokens until it is reused.
            self.slot_tokens[seq.slot] = seq.token_ids[: seq.num_computed]
            self.free_slots.append(seq.slot)
            seq.slot = None

    def _admission_key(self, seq: Sequence, now: float) -> tuple[int, float, int]:
        group = seq.group
        aged = int(max(now - group.arrival, 0.0) / self.config.aging_seconds)
        return (group.priority - aged, group.arrival, seq.seq_id)

    def _enqueue(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)  # ordered at the next admission
