"""An engine request as it crosses to a replica in another process: compiled grammars hold
llguidance state that cannot be pickled, so the grammar travels as its source and the
replica compiles it again (cached there, like everywhere)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenmill.engine.messages import EngineRequest
from tokenmill.sampling.params import SamplingParams
from tokenmill.structured.compiler import GrammarCompiler
from tokenmill.structured.constraints import Constraint, ConstraintKind


@dataclass(frozen=True, slots=True)
class WireRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    grammar: str | None = None  # llguidance grammar source
    tool_calls: bool = False  # the grammar is a tool-call list (its matcher watches repeats)

    @classmethod
    def of(cls, request: EngineRequest) -> WireRequest:
        g = request.grammar
        return cls(
            request.request_id,
            request.prompt_token_ids,
            request.params,
            request.priority,
            g.grammar if g is not None else None,
            g is not None and g.decode is not None,
        )

    def to_engine(self, grammars: GrammarCompiler) -> EngineRequest:
        grammar = None
        if self.grammar is not None:
            kind: ConstraintKind = "tools" if self.tool_calls else "grammar"
            grammar = grammars.compile(Constraint(self.grammar, kind, "grammar"))
        return EngineRequest(
            self.request_id, self.prompt_token_ids, self.params, self.priority, grammar
        )
