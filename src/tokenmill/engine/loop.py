"""The engine loop: the one thread that owns the model runner.

Requests and aborts arrive on a queue; each ``step()`` schedules a batch, runs it, samples a
token for every sequence that reached the end of its known tokens, and sends each request its
news through the callback it came with. Nothing a request does can stop the loop: a failing
batch finishes the requests in it with an error and the loop goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from tokenmill.core.scheduler import Scheduler, SchedulerOutput
from tokenmill.core.sequence import SeqStatus, Sequence, SequenceGroup
from tokenmill.core.spec import NgramIndex
from tokenmill.engine.batch import build_batch
from tokenmill.engine.detok import Detokenizer
from tokenmill.engine.live import LiveRequest, Sink
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, RequestOutput
from tokenmill.engine.verify import Pick, sample_picks
from tokenmill.runner.base import KVCacheFull, ModelRunner
from tokenmill.sampling.sampler import SamplerState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Submit:
    request: EngineRequest
    sink: Sink


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


class EngineLoop:
    """Runs ``step()`` while there is work and sleeps on its inbox when there is none."""

    def __init__(
        self,
        runner: ModelRunner,
        max_num_seqs: int,
        max_batch_tokens: int,
        prefix_cache: bool = True,
        spec_tokens: int = 0,
        spec_max_seqs: int = 1,
    ) -> None:
        self.runner = runner
        self.info = runner.info
        self.scheduler = Scheduler(max_num_seqs, runner.info.kv_cells, max_batch_tokens)
        self.scheduler.prefix_cache = prefix_cache
        self.scheduler.spec_max_seqs = spec_max_seqs
        self.spec_tokens = spec_tokens  # draft length for prompt-lookup speculation; 0: off
        self.spec_proposed = self.spec_accepted = 0  # lifetime draft tokens, for stats
        self._inbox: queue.SimpleQueue[_Submit | _Abort | None] = queue.SimpleQueue()
        self._live: dict[str, LiveRequest] = {}
        self._next_seq_id = 0
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- thread-safe entry points -------------------------------------------------------

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        self._inbox.put(_Submit(request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the loop -------------------------------------------------------------------------

    def run_forever(self) -> None:
        while self._drain_inbox(block=not self.scheduler.has_work):
            if self.scheduler.has_work:
                try:
                    self.step()
                except Exception:  # a bug must not kill the engine: fail what was in flight
                    log.exception("engine step failed; failing the requests in flight")
                    for live in list(self._live.values()):
                        self._fail(live, "internal engine error")

    def step(self) -> None:
        if self.spec_tokens:
            self._propose_drafts()
        plan = self.scheduler.schedule()
        if not plan.chunks:
            self._apply_slot_ops(plan)
            return
        logits = self._run(plan)
        if logits is not None:
            self._postprocess(plan, logits)
        self.steps += 1

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued submits and aborts; False once asked to stop."""
        try:
            msg = self._inbox.get(block=block)
            while True:
                if msg is None:
                    return False
                if isinstance(msg, _Submit):
                    self._add(msg.request, msg.sink)
                else:
                    self._abort(msg.request_id)
                msg = self._inbox.get_nowait()
        except queue.Empty:
            return True

    # -- requests in and out ---------------------------------------------------------------

    def _add(self, req: EngineRequest, sink: Sink) -> None:
        params = req.params
        group = SequenceGroup(
            req.request_id, len(req.prompt_token_ids), req.priority, time.monotonic()
        )
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
        live = LiveRequest(
            request=req,
            group=group,
            sink=sink,
            samplers=[SamplerState(params, req.prompt_token_ids, i) for i in range(params.n)],
            detoks=[Detokenizer(self.info.token_pieces, params.stop) for _ in range(params.n)],
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        )
        if req.grammar is not None:
            live.matchers = [req.grammar.matcher() for _ in range(params.n)]
        elif self.spec_tokens:  # a grammar's masks are per position: no drafts under one
            live.ngrams = [NgramIndex(req.prompt_token_ids) for _ in range(params.n)]
        if req.request_id in self._live or not req.prompt_token_ids:
            self._send(live, RequestOutput(req.request_id, [], 0, True, error="invalid request"))
            return
        self._live[req.request_id] = live
        self.scheduler.add(group)

    def _abort(self, request_id: str) -> None:
        live = self._live.pop(request_id, None)
        if live is None:
            return  # already finished: nothing to do
        self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ABORTED)
        deltas = [ChoiceDelta(s.index, finish_reason="abort") for s in live.group.seqs]
        self._send(live, RequestOutput(request_id, deltas, live.group.prompt_len, finished=True))

    def _fail(self, live: LiveRequest, message: str) -> None:
        self._live.pop(live.request_id, None)
        self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ERROR)
        out = RequestOutput(live.request_id, [], live.group.prompt_len, True, error=message)
        self._send(live, out)

    def _send(self, live: LiveRequest, out: RequestOutput) -> None:
        try:
            live.sink(out)
        except Exception:  # the receiving side is gone (e.g. event loop closed)
            log.debug("dropping output for %s", out.request_id, exc_info=True)

    # -- running a batch -------------------------------------------------------------------

    def _apply_slot_ops(self, plan: SchedulerOutput) -> None:
        for op in plan.slot_ops:
            if op.src is not None:
                self.runner.copy(op.src, op.dst)
            self.runner.trim(op.dst, op.keep)

    def _run(self, plan: SchedulerOutput) -> np.ndarray | None:
        self._apply_slot_ops(plan)
        batch = build_batch(plan.chunks)
        try:
            logits = self.runner.decode(batch)
        except Exception as e:
            slots = [c.seq.slot for c in plan.chunks] + [child.slot for _, child in plan.forks]
            if isinstance(e, KVCacheFull):
                self._recover_kv_full(plan)
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

    def _recover_kv_full(self, plan: SchedulerOutput) -> None:
        """llama.cpp found no room (fragmentation our count cannot see): recompute later.

        The batch's sequences go back to waiting, and the cell budget shrinks a little so the
        scheduler stops planning batches the cache cannot hold.
        """
        # Children forked from this batch never got their copy of the prompt: they go too.
        for seq in [c.seq for c in plan.chunks] + [child for _, child in plan.forks]:
            if seq.status is SeqStatus.RUNNING:
                self.scheduler.preempt(seq)
        self.scheduler.kv_cells = max(self.scheduler.kv_cells * 15 // 16, 1)
        log.warning("KV cache full; usable cells now %d", self.scheduler.kv_cells)

    def _live_of(self, seq: Sequence) -> LiveRequest | None:
        return self._live.get(seq.group.request_id)

    # -- after the batch ---------------------------------------------------------------------

    def _propose_drafts(self) -> None:
        """Give each decoding sequence its prompt-lookup draft for the next step."""
        for seq in self.scheduler.running:
            seq.draft = []
            if seq.num_output == 0 or seq.num_uncomputed != 1 or seq.awaiting_fork:
                continue
            live = self._live_of(seq)
            room = min(
                self.spec_tokens,
                seq.max_tokens - seq.num_output - 1,
                self.info.n_ctx - len(seq.token_ids) - 1,
            )
            if live is not None and live.ngrams and room > 0:
                seq.draft = live.ngrams[seq.index].propose(room)

    def _postprocess(self, plan: SchedulerOutput, logits: np.ndarray) -> None:
        picks: list[Pick] = []
        row = 0
        leader_row: dict[int, int] = {}
        for chunk in plan.chunks:
            n_rows = chunk.num_rows
            if chunk.all_logits and (live := self._live_of(chunk.seq)) is not None:
                live.collect_prompt_logprobs(chunk.seq, chunk.start, logits[row : row + n_rows])
            if chunk.sample:
                first = row + n_rows - 1 - chunk.num_draft
                leader_row[chunk.seq.seq_id] = first
                picks.append(Pick(chunk.seq, first, tuple(chunk.seq.draft)))
            row += n_rows
        # Forked children sample their first token from their leader's last prompt logits.
        picks += [Pick(child, leader_row[leader.seq_id]) for leader, child in plan.forks]
        if not picks:
            return
        lives = [self._live[p.seq.group.request_id] for p in picks]
        states = [live.samplers[p.seq.index] for p, live in zip(picks, lives, strict=True)]
        matchers = [live.matcher_of(p.seq) for p, live in zip(picks, lives, strict=True)]
        verified = sample_picks(logits, picks, states, matchers)
        for pick, live, sampled in zip(picks, lives, verified, strict=True):
            seq = pick.seq
            if pick.draft:
                self._settle_draft(seq, len(sampled) - 1)
            for j, (tok, lp) in enumerate(sampled):
                # sample_picks already observed every token but the last.
                status = live.advance(seq, tok, lp, self.info, observed=j < len(sampled) - 1)
                if status is not None:
                    self.scheduler.finish(seq, status)
                    break
        for live in {id(live): live for live in lives}.values():
            out = live.take_output()
            if out.finished:
                del self._live[out.request_id]
            self._send(live, out)

    def _settle_draft(self, seq: Sequence, accepted: int) -> None:
        """Keep the KV of the draft tokens the model agreed with; drop the rest."""
        proposed = len(seq.draft)
        self.spec_proposed += proposed
        self.spec_accepted += accepted
        self.scheduler.settle_draft(seq, accepted)
        if accepted < proposed and seq.slot is not None:
            self.runner.trim(seq.slot, seq.num_computed)
