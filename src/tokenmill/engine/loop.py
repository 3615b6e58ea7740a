"""The engine loop: the one thread that owns the model runner.

Requests and aborts arrive on a queue; each ``step()`` schedules a batch, runs it, samples a
token for every sequence that reached the end of its known tokens, and sends each request its
news through the callback it came with.

Nothing a request does can stop the loop. Every piece of work done for one request (admission,
sampler and grammar set-up, drafts, sampling, detokenization, stop strings, output) runs inside
``_isolated(live)``: an exception there fails that request alone, with an error output, and
the loop goes on. A failing batch (``llama_decode`` raising) fails the requests in it. If the
thread dies anyway, ``on_death`` is told why, so the process can exit for a supervisor to
restart it rather than hang every later request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tokenmill.config import EngineConfig
from tokenmill.core.scheduler import Scheduler, SchedulerOutput
from tokenmill.core.sequence import SeqStatus, Sequence, SequenceGroup
from tokenmill.core.spec import NgramIndex
from tokenmill.engine.batch import build_batch
from tokenmill.engine.detok import Detokenizer
from tokenmill.engine.live import LiveRequest, Sink
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, RequestOutput
from tokenmill.engine.verify import Pick, Sampled, sample_picks
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


@dataclass(frozen=True, slots=True)
class _FailAll:
    """End every request in the engine with ``message`` (shutdown past its grace period)."""

    message: str
    code: str | None = None


class EngineLoop:
    """Runs ``step()`` while there is work and sleeps on its inbox when there is none."""

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
        self.scheduler = Scheduler(config, runner.info.kv_cells, clock)
        self.spec_tokens = config.spec_tokens  # prompt-lookup draft length; 0: off
        self.spec_proposed = self.spec_accepted = 0  # lifetime draft tokens, for stats
        self._inbox: queue.SimpleQueue[_Submit | _Abort | _FailAll | None] = queue.SimpleQueue()
        self._live: dict[str, LiveRequest] = {}
        self._next_seq_id = 0
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.request_failures = 0  # requests failed by an exception in their own work
        # When the running step began (monotonic), None between steps: liveness probes compare
        # it with their bound to tell a stuck step from a slow one.
        self.step_started: float | None = None
        self.death: BaseException | None = None  # why the thread died, if it did
        self.on_death: Callable[[BaseException], None] | None = None

    # -- thread-safe entry points -------------------------------------------------------

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        self._inbox.put(_Submit(request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def fail_all(self, message: str, code: str | None = None) -> None:
        self._inbox.put(_FailAll(message, code))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the current step has been running (0 between steps)."""
        started = self.step_started
        return 0.0 if started is None else (now or self.clock()) - started

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- the loop -------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except BaseException as e:  # anything that ends the thread is fatal
            self.death = e
            log.critical("the engine thread died: %r", e, exc_info=e)
            self._fail_everything("the engine stopped", code=None)
            if self.on_death is not None:
                self.on_death(e)

    def run_forever(self) -> None:
        while self._drain_inbox(block=not self.scheduler.has_work):
            if self.scheduler.has_work:
                self.step_started = self.clock()
                try:
                    self.step()
                except Exception:  # not one request's fault: a bug in the engine itself
                    log.exception("engine step failed; failing the requests in flight")
                    self._fail_everything("internal engine error")
                finally:
                    self.step_started = None

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
                elif isinstance(msg, _FailAll):
                    self._fail_everything(msg.message, msg.code)
                else:
                    self._abort(msg.request_id)
                msg = self._inbox.get_nowait()
        except queue.Empty:
            return True

    @contextmanager
    def _isolated(self, live: LiveRequest, doing: str) -> Iterator[None]:
        """The one guard around a request's own work: whatever it raises fails that request
        alone (its KV is not trusted again) and the loop goes on."""
        try:
            yield
        except Exception:
            self.request_failures += 1
            log.exception("request %s failed while %s", live.request_id, doing)
            slots = [s.slot for s in live.group.seqs if s.slot is not None]
            self._fail(live, f"internal error while {doing}")
            self.scheduler.forget(slots)

    # -- requests in and out ---------------------------------------------------------------

    def _add(self, req: EngineRequest, sink: Sink) -> None:
        if req.request_id in self._live or not req.prompt_token_ids:
            # The serving layer never sends these; answer rather than corrupt the engine.
            _send(sink, RequestOutput(req.request_id, [], 0, True, error="invalid request"))
            return
        group = SequenceGroup(req.request_id, len(req.prompt_token_ids), req.priority, self.clock())
        live = LiveRequest(request=req, group=group, sink=sink, samplers=[], detoks=[])
        with self._isolated(live, "admitting it"):
            self._set_up(live)
            self._live[req.request_id] = live
            self.scheduler.add(group)

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
        elif self.spec_tokens:  # a grammar's masks are per position: no drafts under one
            live.ngrams = [NgramIndex(req.prompt_token_ids) for _ in range(params.n)]

    def _abort(self, request_id: str) -> None:
        live = self._live.get(request_id)
        if live is None:
            return  # already finished: nothing to do
        with self._isolated(live, "aborting it"):
            self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ABORTED)
            del self._live[request_id]
            deltas = [ChoiceDelta(s.index, finish_reason="abort") for s in live.group.seqs]
            out = RequestOutput(request_id, deltas, live.group.prompt_len, finished=True)
            self._send(live, out)

    def _fail(self, live: LiveRequest, message: str, code: str | None = None) -> None:
        self._live.pop(live.request_id, None)
        self.scheduler.finish_group(live.group, SeqStatus.FINISHED_ERROR)
        out = RequestOutput(
            live.request_id, [], live.group.prompt_len, True, error=message, error_code=code
        )
        self._send(live, out)

    def _fail_everything(self, message: str, code: str | None = None) -> None:
        for live in list(self._live.values()):
            try:
                self._fail(live, message, code)
            except Exception:  # the scheduler's own state is broken: still tell the client
                log.exception("could not fail %s cleanly", live.request_id)
                self._live.pop(live.request_id, None)
                _send(live.sink, RequestOutput(live.request_id, [], 0, True, error=message))

    def _send(self, live: LiveRequest, out: RequestOutput) -> None:
        _send(live.sink, out)

    # -- running a batch -------------------------------------------------------------------

    def _apply_slot_ops(self, plan: SchedulerOutput) -> None:
        for op in plan.slot_ops:
            if op.src is not None:
                self.runner.copy(op.src, op.dst)
            self.runner.trim(op.dst, op.keep)

    def _run(self, plan: SchedulerOutput) -> np.ndarray | None:
        try:
            self._apply_slot_ops(plan)
            logits = self.runner.decode(build_batch(plan.chunks))
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
        for seq in list(self.scheduler.running):  # a failing request leaves the list
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
                with self._isolated(live, "proposing a draft"):
                    seq.draft = live.ngrams[seq.index].propose(room)

    def _postprocess(self, plan: SchedulerOutput, logits: np.ndarray) -> None:
        picks = self._picks(plan, logits)
        if not picks:
            return
        touched: dict[str, LiveRequest] = {}
        for pick, sampled in zip(picks, self._sample(logits, picks), strict=True):
            live = self._live_of(pick.seq)
            if live is None or sampled is None:
                continue  # failed earlier in this step
            touched[live.request_id] = live
            with self._isolated(live, "taking its sampled tokens"):
                self._take(pick, live, sampled)
        for rid, live in touched.items():
            if rid not in self._live:
                continue
            with self._isolated(live, "building its output"):
                out = live.take_output()
                if out.finished:
                    del self._live[rid]
                self._send(live, out)

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

    def _take(self, pick: Pick, live: LiveRequest, sampled: Sampled) -> None:
        """Append a pick's sampled tokens (several when a draft was verified) until its
        sequence finishes."""
        seq = pick.seq
        if pick.draft:
            self._settle_draft(seq, len(sampled) - 1)
        for j, (tok, lp) in enumerate(sampled):
            # sample_picks already observed every token but the last.
            status = live.advance(seq, tok, lp, self.info, observed=j < len(sampled) - 1)
            if status is not None:
                self.scheduler.finish(seq, status)
                break

    def _settle_draft(self, seq: Sequence, accepted: int) -> None:
        """Keep the KV of the draft tokens the model agreed with; drop the rest."""
        proposed = len(seq.draft)
        self.spec_proposed += proposed
        self.spec_accepted += accepted
        self.scheduler.settle_draft(seq, accepted)
        if accepted < proposed and seq.slot is not None:
            self.runner.trim(seq.slot, seq.num_computed)


def _send(sink: Sink, out: RequestOutput) -> None:
    try:
        sink(out)
    except Exception:  # the receiving side is gone (e.g. event loop closed)
        log.debug("dropping output for %s", out.request_id, exc_info=True)
