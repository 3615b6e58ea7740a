"""The state of one generated sequence (one choice of one request), free of any model code."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stopped"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "aborted"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self not in (SeqStatus.WAITING, SeqStatus.RUNNING)


# The one table from engine status to the API's finish_reason.
FINISH_REASON: dict[SeqStatus, str] = {
    SeqStatus.FINISHED_STOPPED: "stop",
    SeqStatus.FINISHED_LENGTH: "length",
    SeqStatus.FINISHED_ABORTED: "abort",
    SeqStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)
class SequenceGroup:
    """The sequences of one request: ``n`` choices that share one prompt.

    Only the leader (index 0) computes the prompt; the others are forked from its KV once the
    prompt is done, so the prompt is computed once whatever ``n`` is.
    """

    request_id: str
    prompt_len: int
    priority: int
    arrival: float
    first_scheduled: float | None = None  # the clock when a step first ran it
    seqs: list[Sequence] = field(default_factory=list)
    # KV cells of the prompt shared by forked sequences, and how many sequences still hold them.
    shared_cells: int = 0
    shared_holders: int = 0


@dataclass(eq=False)
class Sequence:
    """One choice: prompt + output tokens and how much of that is already in the KV cache."""

    seq_id: int
    index: int
    group: SequenceGroup
    token_ids: list[int]
    max_tokens: int
    want_prompt_logprobs: bool = False
    status: SeqStatus = SeqStatus.WAITING
    slot: int | None = None  # the llama.cpp sequence id while admitted
    num_computed: int = 0  # leading tokens whose KV is in the cache
    shared_prefix: int = 0  # leading tokens whose cells belong to the group (after a fork)
    awaiting_fork: bool = False  # admitted, waiting for the leader's prompt KV
    num_cached: int = 0  # prompt tokens reused from the prefix cache at first admission
    num_preemptions: int = 0
    # Speculative tokens proposed for the next step (the engine sets them, the scheduler may
    # cut them to fit); they are not part of ``token_ids`` until the model agrees.
    draft: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return self.group.prompt_len

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.group.prompt_len

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def own_cells(self) -> int:
        """KV cells this sequence alone accounts for."""
        return self.num_computed - self.shared_prefix

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Lower runs first: higher priority (smaller number), then earlier arrival (FCFS)."""
        return (self.group.priority, self.group.arrival, self.seq_id)
