"""The typed messages between the serving layer and the engine thread."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenmill.sampling.params import SamplingParams
from tokenmill.sampling.sampler import TokenLogprob
from tokenmill.structured.compiler import CompiledGrammar


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """A tokenized prompt to continue ``params.n`` times."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0  # lower runs first
    grammar: CompiledGrammar | None = None  # every choice's tokens must follow it


@dataclass(frozen=True, slots=True)
class PromptLogprob:
    """Logprob of prompt token ``token_id`` given the tokens before it, and the top-k there."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...]


@dataclass(slots=True)
class ChoiceDelta:
    """What one choice produced in one engine step."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(slots=True)
class RequestOutput:
    """One step's news for one request; ``finished`` is set on its last message."""

    request_id: str
    deltas: list[ChoiceDelta]
    num_prompt_tokens: int
    finished: bool = False
    num_cached_tokens: int = 0
    # Sent once, with the first tokens: None for the first prompt token, then one per token.
    prompt_logprobs: list[PromptLogprob | None] | None = None
    error: str | None = None  # the request failed; the message says why
    error_code: str | None = None  # e.g. "shutting_down": the edge picks the HTTP status
    # Seconds from arrival to the first step that ran the request: on one output, the first
    # after that step.
    queue_time: float | None = None

    def merge(self, later: RequestOutput) -> None:
        """Fold the next output of the same request into this one, as if one step had
        produced both: each choice's text, tokens and logprobs appended in order."""
        by_index = {d.index: d for d in self.deltas}
        for d in later.deltas:
            mine = by_index.get(d.index)
            if mine is None:
                self.deltas.append(d)
                by_index[d.index] = d
                continue
            mine.text += d.text
            mine.token_ids.extend(d.token_ids)
            mine.logprobs.extend(d.logprobs)
            if d.finish_reason is not None:
                mine.finish_reason, mine.stop_reason = d.finish_reason, d.stop_reason
        self.num_prompt_tokens = later.num_prompt_tokens or self.num_prompt_tokens
        self.finished = self.finished or later.finished
        self.num_cached_tokens = later.num_cached_tokens or self.num_cached_tokens
        if self.prompt_logprobs is None:
            self.prompt_logprobs = later.prompt_logprobs
        if later.error is not None:
            self.error, self.error_code = later.error, later.error_code
        if self.queue_time is None:
            self.queue_time = later.queue_time
