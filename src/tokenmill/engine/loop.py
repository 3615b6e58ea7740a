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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tokenmill.core.scheduler import Scheduler, SchedulerOutput
from tokenmill.core.sequence import FINISH_REASON, SeqStatus, Sequence, SequenceGroup
from tokenmill.core.spec import NgramIndex
from tokenmill.engine.batch import build_batch
from tokenmill.engine.detok import Detokenizer
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, PromptLogprob, RequestOutput
from tokenmill.engine.prompt_logprobs import prompt_logprobs_rows
from tokenmill.runner.base import KVCacheFull, ModelRunner
from tokenmill.sampling.sampler import FloatArray, SamplerState, TokenLogprob, sample_batch
from tokenmill.structured.matcher import Matcher, apply_masks

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]


@dataclass(eq=False)
class _Live:
    """Engine-side state of one request."""

    request: EngineRequest
    group: SequenceGroup
    sink: Sink
    samplers: list[SamplerState]
    detoks: list[Detokenizer]
    prompt_logprobs: list[PromptLogprob | None] | None = None
    prompt_logprobs_sent: bool = False
    outputs: dict[int, ChoiceDelta] = field(default_factory=dict)
    ngrams: list[NgramIndex] = field(default_factory=list)  # per choice, for speculation
    matchers: list[Matcher] = field(default_factory=list)  # per choice, when constrained


@dataclass(frozen=True, slots=True)
class _Pick:
    """A sequence that samples this step: from logits ``row``, then, while the model agrees
    with ``draft``, from the rows after it."""

    seq: Sequence
    row: int
    draft: tuple[int, ...] = ()


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
        self._live: dict[str, _Live] = {}
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
        live = _Live(
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

    def _fail(self, live: _Live, message: str) -> None:
        self._live.pop(live.request.request_id, None)
        self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ERROR)
        out = RequestOutput(live.request.request_id, [], live.group.prompt_len, True, error=message)
        self._send(live, out)

    def _send(self, live: _Live, out: RequestOutput) -> None:
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

    def _live_of(self, seq: Sequence) -> _Live | None:
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
        picks: list[_Pick] = []
        row = 0
        leader_row: dict[int, int] = {}
        for chunk in plan.chunks:
            n_rows = chunk.num_rows
            if chunk.all_logits:
                self._collect_prompt_logprobs(chunk.seq, chunk.start, logits[row : row + n_rows])
            if chunk.sample:
                first = row + n_rows - 1 - chunk.num_draft
                leader_row[chunk.seq.seq_id] = first
                picks.append(_Pick(chunk.seq, first, tuple(chunk.seq.draft)))
            row += n_rows
        # Forked children sample their first token from their leader's last prompt logits.
        picks += [_Pick(child, leader_row[leader.seq_id]) for leader, child in plan.forks]
        if not picks:
            return
        lives = [self._live[p.seq.group.request_id] for p in picks]
        states = [live.samplers[p.seq.index] for p, live in zip(picks, lives, strict=True)]
        verified = self._verify(logits, picks, states)
        for pick, live, sampled in zip(picks, lives, verified, strict=True):
            seq = pick.seq
            if pick.draft:
                self._settle_draft(seq, len(sampled) - 1)
            for j, (tok, lp) in enumerate(sampled):
                # _verify already observed every token but the last.
                self._advance(live, seq, tok, lp, observed=j < len(sampled) - 1)
                if seq.status.finished:
                    break
        for live in {id(live): live for live in lives}.values():
            self._emit(live)

    def _verify(
        self, logits: np.ndarray, picks: list[_Pick], states: list[SamplerState]
    ) -> list[list[tuple[int, TokenLogprob | None]]]:
        """Sample each pick's token; where it equals the next draft token, that draft token
        is now real, so sample again from the row after it, and so on.

        Every token is sampled from the same distribution, with the same random draws, as
        without speculation: the draft only decides how many rows are at hand.
        """
        masks = [self._matcher_of(p.seq) for p in picks]
        tokens, lps = sample_batch(logits[[p.row for p in picks]], states, _constrainer(masks))
        out = [[(tok, lp)] for tok, lp in zip(tokens, lps, strict=True)]
        agreeing = [i for i, p in enumerate(picks) if p.draft and tokens[i] == p.draft[0]]
        r = 1
        while agreeing:
            for i in agreeing:
                states[i].observe(out[i][-1][0])
            rows = logits[[picks[i].row + r for i in agreeing]]
            tokens, lps = sample_batch(rows, [states[i] for i in agreeing])
            still = []
            for i, tok, lp in zip(agreeing, tokens, lps, strict=True):
                out[i].append((tok, lp))
                if r < len(picks[i].draft) and tok == picks[i].draft[r]:
                    still.append(i)
            agreeing, r = still, r + 1
        return out

    def _matcher_of(self, seq: Sequence) -> Matcher | None:
        live = self._live_of(seq)
        return live.matchers[seq.index] if live is not None and live.matchers else None

    def _settle_draft(self, seq: Sequence, accepted: int) -> None:
        """Keep the KV of the draft tokens the model agreed with; drop the rest."""
        proposed = len(seq.draft)
        self.spec_proposed += proposed
        self.spec_accepted += accepted
        self.scheduler.settle_draft(seq, accepted)
        if accepted < proposed and seq.slot is not None:
            self.runner.trim(seq.slot, seq.num_computed)

    def _advance(
        self,
        live: _Live,
        seq: Sequence,
        tok: int,
        lp: TokenLogprob | None,
        observed: bool = False,
    ) -> None:
        """Append a sampled token and decide whether the sequence is done."""
        seq.token_ids.append(tok)
        matcher = live.matchers[seq.index] if live.matchers else None
        if matcher is not None and tok not in self.info.eog_ids and not matcher.accept(tok):
            log.error(
                "%s: sampled a token its grammar forbids: %s", seq.group.request_id, matcher.error
            )
        if not observed:
            live.samplers[seq.index].observe(tok)
        if live.ngrams:
            live.ngrams[seq.index].extend([tok])
        delta = live.outputs.setdefault(seq.index, ChoiceDelta(seq.index))
        delta.token_ids.append(tok)
        detok = live.detoks[seq.index]
        if tok in self.info.eog_ids:
            delta.text += detok.flush()
            self._finish(live, seq, delta, SeqStatus.FINISHED_STOPPED, None)
            return
        if lp is not None:
            delta.logprobs.append(lp)
        text, stop = detok.push(tok)
        delta.text += text
        if stop is not None:
            self._finish(live, seq, delta, SeqStatus.FINISHED_STOPPED, stop)
        elif matcher is not None and matcher.is_finished():
            # The grammar is complete: stop here rather than spend a step sampling EOS.
            if matcher.error:
                log.warning(
                    "request %s: grammar gave up: %s", live.request.request_id, matcher.error
                )
            delta.text += detok.flush()
            self._finish(live, seq, delta, SeqStatus.FINISHED_STOPPED, None)
        elif seq.num_output >= seq.max_tokens or len(seq.token_ids) >= self.info.n_ctx:
            delta.text += detok.flush()
            self._finish(live, seq, delta, SeqStatus.FINISHED_LENGTH, None)

    def _finish(
        self, live: _Live, seq: Sequence, delta: ChoiceDelta, status: SeqStatus, stop: str | None
    ) -> None:
        self.scheduler.finish(seq, status)
        delta.finish_reason = FINISH_REASON[status]
        delta.stop_reason = stop

    def _emit(self, live: _Live) -> None:
        req_id = live.request.request_id
        finished = all(s.status.finished for s in live.group.seqs)
        out = RequestOutput(
            req_id,
            sorted(live.outputs.values(), key=lambda d: d.index),
            live.group.prompt_len,
            finished=finished,
            num_cached_tokens=live.group.seqs[0].num_cached,
        )
        live.outputs = {}
        if live.prompt_logprobs is not None and not live.prompt_logprobs_sent:
            out.prompt_logprobs = live.prompt_logprobs
            live.prompt_logprobs_sent = True
        if finished:
            del self._live[req_id]
        self._send(live, out)

    def _collect_prompt_logprobs(self, seq: Sequence, start: int, rows: np.ndarray) -> None:
        live = self._live_of(seq)
        if live is None or live.prompt_logprobs is None or live.prompt_logprobs_sent:
            return
        k = live.request.params.prompt_logprobs or 0
        live.prompt_logprobs.extend(
            prompt_logprobs_rows(rows, seq.token_ids, start, seq.prompt_len, k)
        )
        if start + rows.shape[0] >= seq.prompt_len:
            seq.want_prompt_logprobs = False  # a recompute after preemption need not redo them


def _constrainer(matchers: list[Matcher | None]) -> Callable[[FloatArray], None] | None:
    """Masking for the rows whose sequences follow a grammar; None when none do, so
    unconstrained batches pay nothing."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return None
    active = [m for m in matchers if m is not None]
    return lambda logits: apply_masks(logits, rows, active)
