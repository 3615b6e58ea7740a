"""The typed messages between the scheduler and the engine: a step's plan, and what the
engine decided for each sequence once the batch ran."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenmill.core.sequence import SeqStatus, Sequence


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """``num_tokens`` tokens of ``seq`` starting at position ``start`` go into this batch."""

    seq: Sequence
    start: int
    num_tokens: int
    sample: bool  # the chunk reaches the last known token: sample the next one
    all_logits: bool  # logits for every position (prompt logprobs)
    num_draft: int = 0  # speculative tokens (``seq.draft``) after the last known token

    @property
    def num_rows(self) -> int:
        """Logits rows this chunk produces."""
        if self.all_logits:
            return self.num_tokens
        return 1 + self.num_draft if self.sample else 0


@dataclass(frozen=True, slots=True)
class SlotOp:
    """Before the batch: optionally copy slot ``src``'s KV, or restore host entry ``entry``,
    into ``dst``, then keep ``keep`` tokens."""

    dst: int
    keep: int
    src: int | None = None
    entry: int | None = None


@dataclass(frozen=True, slots=True)
class SaveOp:
    """Before the batch: save ``slot``'s KV to host memory as ``entry`` (core/hostcache.py)."""

    slot: int
    entry: int


@dataclass(frozen=True, slots=True)
class DropOp:
    """Before the batch: free host entry ``entry``."""

    entry: int


KVOp = SlotOp | SaveOp | DropOp


@dataclass(frozen=True, slots=True)
class SeqUpdate:
    """What the engine decided for one sequence after a step: the new ``tokens`` (several
    when ``accepted_draft`` draft tokens were verified), and the status it finishes with."""

    seq: Sequence
    tokens: list[int]
    accepted_draft: int = 0
    finish: SeqStatus | None = None


@dataclass(slots=True)
class SchedulerOutput:
    """One step's plan, applied by the runner in order: slot ops, run chunks, then fork."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    slot_ops: list[KVOp] = field(default_factory=list)  # in order: a save precedes a reuse
    # (leader, child): after this batch, copy the leader's prompt KV to the child, which then
    # samples its first token from the leader's last logits.
    forks: list[tuple[Sequence, Sequence]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)
