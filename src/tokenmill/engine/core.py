"""The engine core: requests in, one ``step()`` at a time, ``RequestOutput``s out.

Single-threaded and callback-free (the engine thread in ``loop.py`` drives it; tests drive it
directly). Each step the scheduler plans a batch, the runner computes it, the sampler picks
tokens, each request's ``LiveRequest`` decides what they mean (stop strings, grammar, length),
and the scheduler applies those decisions: it is the only writer of ``Sequence``.

Nothing a request does can stop the core. Every piece of work done for one request
(admission, sampler and grammar set-up, drafts, sampling, detokenization, stop strings,
output) runs inside ``_isolated(live)``: an exception there fails that request alone, with an
error output. A failing batch (``llama_decode`` raising) fails the requests in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from tokenmill.config import EngineConfig
from tokenmill.core.plan import DropOp, SaveOp, SchedulerOutput, SeqUpdate
from tokenmill.core.scheduler import Scheduler
from tokenmill.core.sequence import SeqStatus, Sequence, SequenceGroup
from tokenmill.core.spec import NgramIndex
from tokenmill.engine.batch import build_batch
from tokenmill.engine.detok import Detokenizer
from tokenmill.engine.live import LiveRequest
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, RequestOutput
from tokenmill.engine.sample import Pick, Sampled, sample_picks
from tokenmill.runner.base import KVCacheFull, ModelRunner
from tokenmill.sampling.sampler import SamplerState

log = logging.getLogger(__name__)


class EngineCore:
    """Owns the runner, the scheduler and the live requests; not thread-safe."""

    def __init__(
        self,
        runner: ModelRunner,
        config: EngineConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.info = runner.info
        self.config = config
        self.clock = clock
        host_tokens = 0
        if runner.info.kv_bytes_per_token:
            host_tokens = (config.host_cache_mib << 20) // runner.info.kv_bytes_per_token
        self.scheduler = Scheduler(config, runner.info.kv_cells, clock, host_tokens)
        self._live: dict[str, LiveRequest] = {}
        self._outbox: list[RequestOutput] = []
        self._next_seq_id = 0
        # Lifetime counters, for stats.
        self.steps = 0
        self.spec_proposed = self.spec_accepted = 0  # speculative draft tokens
        self.request_failures = 0  # requests failed by an exception in their own work

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def live_ids(self) -> list[str]:
        return list(self._live)

    # -- requests in ----------------------------------------------------------------------------

    def add_request(self, req: EngineRequest) -> list[RequestOutput]:
        """Queue a request; returns an error output at once if it cannot be taken."""
        if req.request_id in self._live or not req.prompt_token_ids:
            # The serving layer never sends these; answer rather than corrupt the engine.
            return [RequestOutput(req.request_id, [], 0, True, error="invalid request")]
        group = SequenceGroup(req.request_id, len(req.prompt_token_ids), req.priority, self.clock())
        live = LiveRequest(request=req, group=group, samplers=[], detoks=[])
        with self._isolated(live, "admitting it"):
            self._set_up(live)
            self._live[req.request_id] = live
            self.scheduler.add(group)
        return self._take_outbox()

    def _set_up(self, live: LiveRequest) -> None:
        """Sequences, samplers, detokenizers and grammar matchers of a new request."""
        req, group, params = live.request, live.group, live.request.params
        for i in range(params.n):
            seq = Sequence(
                seq_id=self._next_seq_id,
                index=i,
                group=group,
                token_ids=list(req.prompt_token_ids),
                max_tokens=params.max_tokens,
                want_prompt_logprobs=i == 0 and params.prompt_logprobs is not None,
            )
            self._next_seq_id += 1
            group.seqs.append(seq)
        live.samplers = [SamplerState(params, req.prompt_token_ids, i) for i in range(params.n)]
        live.detoks = [Detokenizer(self.info.token_pieces, params.stop) for _ in range(params.n)]
        live.prompt_logprobs = [None] if params.prompt_logprobs is not None else None
        if req.grammar is not None:
            live.matchers = [req.grammar.matcher() for _ in range(params.n)]
        elif self.config.spec_tokens:  # a grammar's masks are per position: no drafts there
            live.ngrams = [NgramIndex(req.prompt_token_ids) for _ in range(params.n)]

    def abort_request(self, request_id: str) -> list[RequestOutput]:
        """End a request now (client gone); its last output says ``abort``."""
        live = self._live.get(request_id)
        if live is None:
            return []  # already finished: nothing to do
        with self._isolated(live, "aborting it"):
            self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ABORTED)
            del self._live[request_id]
            deltas = [ChoiceDelta(s.index, finish_reason="abort") for s in live.group.seqs]
            self._outbox.append(RequestOutput(request_id, deltas, live.group.prompt_len, True))
        return self._take_outbox()

    def fail_requests(self, message: str, code: str | None = None) -> list[RequestOutput]:
        """End every request with an error (shutdown past its grace, or an engine bug)."""
        for live in list(self._live.values()):
            try:
                self._fail(live, message, code)
            except Exception:  # the scheduler's own state is broken: still tell the client
                log.exception("could not fail %s cleanly", live.request_id)
                self._live.pop(live.request_id, None)
                self._outbox.append(RequestOutput(live.request_id, [], 0, True, error=message))
        return self._take_outbox()

    # -- the step --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run, sample, decide; the outputs of this step."""
        drafts = self._drafts() if self.config.spec_tokens else None
        plan = self.scheduler.schedule(drafts)
        if not plan.chunks:
            self._apply_slot_ops(plan)
            return self._take_outbox()
        logits = self._run(plan)
        if logits is not None:
            self._postprocess(plan, logits)
        self.steps += 1
        return self._take_outbox()

    @contextmanager
    def _isolated(self, live: LiveRequest, doing: str) -> Iterator[None]:
        """The one guard around a request's own work: whatever it raises fails that request
        alone (its KV is not trusted again) and the engine goes on."""
        try:
            yield
        except Exception:
            self.request_failures += 1
            log.exception("request %s failed while %s", live.request_id, doing)
            slots = [s.slot for s in live.group.seqs if s.slot is not None]
            self._fail(live, f"internal error while {doing}")
            self.scheduler.forget(slots)

    def _fail(self, live: LiveRequest, message: str, code: str | None = None) -> None:
        self._live.pop(live.request_id, None)
        self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ERROR)
        self._outbox.append(
            RequestOutput(
                live.request_id, [], live.group.prompt_len, True, error=message, error_code=code
            )
        )

    def _take_outbox(self) -> list[RequestOutput]:
        out, self._outbox = self._outbox, []
        return out

    def _live_of(self, seq: Sequence) -> LiveRequest | None:
        return self._live.get(seq.group.request_id)

    # -- running a batch -----------------------------------------------------------------------

    def _drafts(self) -> dict[int, list[int]]:
        """Each decoding sequence's prompt-lookup draft for the next step."""
        drafts: dict[int, list[int]] = {}
        for seq in self.scheduler.running:
            live = self._live_of(seq)
            if live is None or not live.ngrams:
                continue
            if seq.num_output == 0 or seq.num_uncomputed != 1 or seq.awaiting_fork:
                continue
            room = min(
                self.config.spec_tokens,
                seq.max_tokens - seq.num_output - 1,
                self.info.n_ctx - len(seq.token_ids) - 1,
            )
            if room > 0:
                with self._isolated(live, "proposing a draft"):
                    drafts[seq.seq_id] = live.ngrams[seq.index].propose(room)
        return drafts

    def _apply_slot_ops(self, plan: SchedulerOutput) -> None:
        for op in plan.slot_ops:
            if isinstance(op, SaveOp):
                self.runner.save(op.slot, op.entry)
            elif isinstance(op, DropOp):
                self.runner.drop(op.entry)
            else:
                if op.src is not None:
                    self.runner.copy(op.src, op.dst)
                elif op.entry is not None:
                    self.runner.restore(op.entry, op.dst)
                self.runner.trim(op.dst, op.keep)

    def _run(self, plan: SchedulerOutput) -> np.ndarray | None:
        try:
            self._apply_slot_ops(plan)
            logits = self.runner.decode(build_batch(plan.chunks))
        except Exception as e:
            slots = [c.seq.slot for c in plan.chunks] + [child.slot for _, child in plan.forks]
            if isinstance(e, KVCacheFull):
                self.scheduler.on_kv_full(plan)
                log.warning("KV cache full; usable cells now %d", self.scheduler.kv_cells)
            else:
                log.exception("decode failed for %d sequences", len(plan.chunks))
                for live in {id(c.seq.group): self._live_of(c.seq) for c in plan.chunks}.values():
                    if live is not None:
                        self._fail(live, "the model failed to run this batch")
            # Part of the batch may or may not be in the KV: the prefix cache must not trust it.
            self.scheduler.forget([s for s in slots if s is not None])
            return None
        for leader, child in plan.forks:
            assert leader.slot is not None and child.slot is not None
            self.runner.copy(leader.slot, child.slot)  # the leader's stream holds the prompt
        return logits

    # -- after the batch -------------------------------------------------------------------------

    def _postprocess(self, plan: SchedulerOutput, logits: np.ndarray) -> None:
        picks = self._picks(plan, logits)
        updates: list[SeqUpdate] = []
        touched: dict[str, LiveRequest] = {}
        for pick, sampled in zip(picks, self._sample(logits, picks), strict=True):
            live = self._live_of(pick.seq)
            if live is None or sampled is None:
                continue  # failed earlier in this step
            touched[live.request_id] = live
            with self._isolated(live, "taking its sampled tokens"):
                kept, finish = live.decide(pick.seq, sampled, self.info)
                accepted = len(sampled) - 1
                if pick.draft:
                    self.spec_proposed += len(pick.draft)
                    self.spec_accepted += accepted
                updates.append(SeqUpdate(pick.seq, kept, accepted, finish))
        for trim in self.scheduler.update_from_output(plan, updates):
            self.runner.trim(trim.dst, trim.keep)  # the KV of rejected draft tokens
        for rid, live in touched.items():
            if rid not in self._live:
                continue
            with self._isolated(live, "building its output"):
                out = live.take_output()
                if out.finished:
                    del self._live[rid]
                self._outbox.append(out)

    def _picks(self, plan: SchedulerOutput, logits: np.ndarray) -> list[Pick]:
        """Collect prompt logprobs from the batch's rows; return who samples from which row."""
        picks: list[Pick] = []
        row = 0
        leader_row: dict[int, int] = {}
        for chunk in plan.chunks:
            n_rows = chunk.num_rows
            if chunk.all_logits and (live := self._live_of(chunk.seq)) is not None:
                with self._isolated(live, "computing prompt logprobs"):
                    rows = logits[row : row + n_rows]
                    live.collect_prompt_logprobs(chunk.seq, chunk.start, rows)
            if chunk.sample:
                first = row + n_rows - 1 - chunk.num_draft
                leader_row[chunk.seq.seq_id] = first
                picks.append(Pick(chunk.seq, first, tuple(chunk.seq.draft)))
            row += n_rows
        # Forked children sample their first token from their leader's last prompt logits.
        picks += [Pick(child, leader_row[leader.seq_id]) for leader, child in plan.forks]
        return [p for p in picks if self._live_of(p.seq) is not None]

    def _sample(self, logits: np.ndarray, picks: list[Pick]) -> list[Sampled | None]:
        """Every pick's tokens, in one vectorised pass. If that raises, one request's state
        is at fault: sample each request alone, so only the culprit fails (the others' random
        streams then differ from an undisturbed run, which only this path can cause)."""
        if not picks:
            return []
        lives = [self._live[p.seq.group.request_id] for p in picks]
        states = [live.samplers[p.seq.index] for p, live in zip(picks, lives, strict=True)]
        matchers = [live.matcher_of(p.seq) for p, live in zip(picks, lives, strict=True)]
        try:
            return list(sample_picks(logits, picks, states, matchers))
        except Exception:
            log.warning("batch sampling failed; sampling each request alone", exc_info=True)
        out: list[Sampled | None] = []
        for pick, live, state, matcher in zip(picks, lives, states, matchers, strict=True):
            one: Sampled | None = None
            if self._live_of(pick.seq) is live:
                with self._isolated(live, "sampling"):
                    one = sample_picks(logits, [pick], [state], [matcher])[0]
            out.append(one)
        return out
