"""Engine-side state of one request: what its choices sampled, and the news not yet sent.

The scheduler owns the sequences; this module owns the output side of a step. ``decide``
follows a choice's new tokens through its sampler, grammar and detokenizer and says which
tokens to keep and whether the choice is done (the scheduler applies that); ``take_output``
packs one step's news.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from tokenmill.core.sequence import FINISH_REASON, SeqStatus, Sequence, SequenceGroup
from tokenmill.core.spec import NgramIndex
from tokenmill.engine.detok import Detokenizer
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, PromptLogprob, RequestOutput
from tokenmill.engine.prompt_logprobs import prompt_logprobs_rows
from tokenmill.runner.base import ModelInfo
from tokenmill.sampling.sampler import SamplerState, TokenLogprob
from tokenmill.structured.matcher import Matcher

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LiveRequest:
    """One request in the engine: its sequences, and per choice its sampler, detokenizer,
    n-gram index (speculation) and grammar matcher (constrained output)."""

    request: EngineRequest
    group: SequenceGroup
    samplers: list[SamplerState]
    detoks: list[Detokenizer]
    prompt_logprobs: list[PromptLogprob | None] | None = None
    prompt_logprobs_sent: bool = False
    queue_time_sent: bool = False
    outputs: dict[int, ChoiceDelta] = field(default_factory=dict)
    ngrams: list[NgramIndex] = field(default_factory=list)
    matchers: list[Matcher] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def matcher_of(self, seq: Sequence) -> Matcher | None:
        return self.matchers[seq.index] if self.matchers else None

    def decide(
        self, seq: Sequence, sampled: list[tuple[int, TokenLogprob | None]], info: ModelInfo
    ) -> tuple[list[int], SeqStatus | None]:
        """The tokens of ``sampled`` to keep (several when a draft was verified; fewer when
        one of them ends the choice) and the status the choice finishes with, if it does.
        Reads ``seq``, never writes it."""
        kept: list[int] = []
        for j, (tok, lp) in enumerate(sampled):
            kept.append(tok)
            # sample_picks already observed every token but the last.
            observed = j < len(sampled) - 1
            status = self._advance(seq, tok, lp, info, len(seq.token_ids) + len(kept), observed)
            if status is not None:
                return kept, status
        return kept, None

    def _advance(
        self,
        seq: Sequence,
        tok: int,
        lp: TokenLogprob | None,
        info: ModelInfo,
        length: int,
        observed: bool,
    ) -> SeqStatus | None:
        """Follow one token (``seq`` will then hold ``length`` tokens); the status the
        sequence finishes with, if it does. ``observed``: the sampler has seen it already."""
        matcher = self.matcher_of(seq)
        if matcher is not None and tok not in info.eog_ids and not matcher.accept(tok):
            log.error("%s: sampled a token its grammar forbids: %s", self.request_id, matcher.error)
        if not observed:
            self.samplers[seq.index].observe(tok)
        if self.ngrams:
            self.ngrams[seq.index].extend([tok])
        delta = self.outputs.setdefault(seq.index, ChoiceDelta(seq.index))
        delta.token_ids.append(tok)
        detok = self.detoks[seq.index]
        if tok in info.eog_ids:
            delta.text += detok.flush()
            return _finish(delta, SeqStatus.FINISHED_STOPPED)
        if lp is not None:
            delta.logprobs.append(lp)
        text, stop = detok.push(tok)
        delta.text += text
        if stop is not None:
            return _finish(delta, SeqStatus.FINISHED_STOPPED, stop)
        if matcher is not None and matcher.is_finished():
            # The grammar is complete: stop here rather than spend a step sampling EOS.
            if matcher.error:
                log.warning("request %s: grammar gave up: %s", self.request_id, matcher.error)
            delta.text += detok.flush()
            return _finish(delta, SeqStatus.FINISHED_STOPPED)
        if length - seq.prompt_len >= seq.max_tokens or length >= info.n_ctx:
            delta.text += detok.flush()
            return _finish(delta, SeqStatus.FINISHED_LENGTH)
        return None

    def take_output(self) -> RequestOutput:
        """This step's news; prompt logprobs ride along with the first message."""
        out = RequestOutput(
            self.request_id,
            sorted(self.outputs.values(), key=lambda d: d.index),
            self.group.prompt_len,
            finished=all(s.status.finished for s in self.group.seqs),
            num_cached_tokens=self.group.seqs[0].num_cached,
        )
        self.outputs = {}
        if not self.queue_time_sent and self.group.first_scheduled is not None:
            out.queue_time = max(self.group.first_scheduled - self.group.arrival, 0.0)
            self.queue_time_sent = True
        if self.prompt_logprobs is not None and not self.prompt_logprobs_sent:
            out.prompt_logprobs = self.prompt_logprobs
            self.prompt_logprobs_sent = True
        return out

    def collect_prompt_logprobs(self, seq: Sequence, start: int, rows: np.ndarray) -> None:
        """Logprobs of the prompt tokens after ``start`` from their prefill logits ``rows``."""
        if self.prompt_logprobs is None or self.prompt_logprobs_sent:
            return
        k = self.request.params.prompt_logprobs or 0
        self.prompt_logprobs.extend(
            prompt_logprobs_rows(rows, seq.token_ids, start, seq.prompt_len, k)
        )


def _finish(delta: ChoiceDelta, status: SeqStatus, stop: str | None = None) -> SeqStatus:
    delta.finish_reason = FINISH_REASON[status]
    delta.stop_reason = stop
    return status
