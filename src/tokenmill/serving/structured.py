"""Structured output and tool calls on the serving side: constraints in, tool calls out.

The request's guided_* / response_format / tools fields become one compiled grammar (off the
event loop: a cache miss may take up to the compiler's time bound). Tools are shown to the
model through its chat template when the template knows about tools, otherwise in a system
message; earlier calls and their results are written back in the format the model is asked
to use. On the way out, the choice's text is split into content and tool calls, whole or as
stream deltas shaped the way the official clients assemble them.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from tokenmill.protocol.requests import ChatCompletionRequest, ChatMessage, GenerationFields
from tokenmill.serving.common import ServingContext
from tokenmill.structured import (
    CallList,
    CompiledGrammar,
    Constraint,
    ContentDelta,
    ToolCallEnd,
    ToolCallParser,
    ToolCallStart,
    ToolSpec,
    final_calls,
    format_tool_calls,
    format_tool_result,
    grammar_for,
    tools_system_prompt,
)


@dataclass(frozen=True)
class ResolvedConstraint:
    """What a request's structured-output fields resolved to."""

    constraint: Constraint | None = None
    grammar: CompiledGrammar | None = None
    legacy_functions: bool = False  # answer with ``function_call`` rather than ``tool_calls``

    @property
    def tools(self) -> bool:
        """Parse the output for tool calls."""
        return self.constraint is not None and self.constraint.kind == "tools"


async def resolve_constraint(req: GenerationFields, ctx: ServingContext) -> ResolvedConstraint:
    """Validate and compile the request's constraint (400 naming the field when invalid)."""
    tool_fields: dict[str, Any] = {}
    if isinstance(req, ChatCompletionRequest):
        tool_fields = {
            "tools": req.tools,
            "tool_choice": req.tool_choice,
            "parallel_tool_calls": req.parallel_tool_calls,
            "functions": req.functions,
            "function_call": req.function_call,
        }
    constraint = grammar_for(
        guided_json=req.guided_json,
        guided_regex=req.guided_regex,
        guided_choice=req.guided_choice,
        guided_grammar=req.guided_grammar,
        response_format=req.response_format,
        **tool_fields,
    )
    if constraint is None:
        return ResolvedConstraint()
    grammar = await asyncio.to_thread(ctx.grammars.compile, constraint)
    return ResolvedConstraint(constraint, grammar, tool_fields.get("functions") is not None)


# -- the prompt -------------------------------------------------------------------------------


def offered_tools(resolved: ResolvedConstraint) -> tuple[tuple[ToolSpec, ...], Any]:
    """The tools the model may call and the tool choice, or ``()`` when it may call none:
    parsed once, with the constraint (tool_choice ``none`` makes no tools constraint)."""
    c = resolved.constraint
    if c is None or c.kind != "tools" or not c.tools:
        return (), None
    return c.tools, c.tool_choice


def template_messages(
    req: ChatCompletionRequest, resolved: ResolvedConstraint, template_knows_tools: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages to render and extra template variables (``tools`` for templates that
    take them)."""
    specs, choice = offered_tools(resolved)
    native = template_knows_tools and bool(specs)
    # Calls and results are rewritten in our format only when the model was told about it.
    rewrite = bool(specs) and not native
    messages = [_message(m, rewrite) for m in req.messages]
    if specs and not native:
        prompt = tools_system_prompt(specs, choice)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    extra = {"tools": [s.as_openai() for s in specs]} if native else {}
    return messages, extra


def _message(m: ChatMessage, rewrite: bool) -> dict[str, Any]:
    role = "system" if m.role == "developer" else m.role
    msg: dict[str, Any] = {"role": role, "content": m.text}
    for key in ("name", "tool_calls", "tool_call_id"):
        if getattr(m, key) is not None:
            msg[key] = getattr(m, key)
    if not rewrite:
        return msg
    # The template cannot show calls and results: write them as the model is asked to.
    if m.role == "assistant" and m.tool_calls:
        calls = [
            (c.get("function", {}).get("name", ""), c.get("function", {}).get("arguments", ""))
            for c in m.tool_calls
        ]
        text = format_tool_calls(calls)
        msg["content"] = f"{m.text}\n{text}" if m.text else text
        del msg["tool_calls"]
    elif m.role == "tool":
        msg["content"] = format_tool_result(m.text)
    return msg


# -- the response -----------------------------------------------------------------------------


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def message_fields(
    text: str, structure: ResolvedConstraint, finish_reason: str | None
) -> tuple[dict[str, Any], str | None]:
    """A finished choice's message fields and finish reason."""
    if not structure.tools:
        return {"content": text, "tool_calls": [], "function_call": None}, finish_reason
    content, calls = final_calls(text)
    reason = _finish_reason(structure, any(c.complete for c in calls), finish_reason)
    if not calls:
        return {"content": content or "", "tool_calls": [], "function_call": None}, reason
    if structure.legacy_functions:
        fn = {"name": calls[0].name, "arguments": calls[0].arguments}
        return {"content": content, "tool_calls": [], "function_call": fn}, reason
    tool_calls = [
        {
            "id": call_id(),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in calls
    ]
    return {"content": content, "tool_calls": tool_calls, "function_call": None}, reason


def _finish_reason(
    structure: ResolvedConstraint, complete: bool, finish_reason: str | None
) -> str | None:
    """With a complete call the choice ends with its calls, even when generation went on
    (the calls after it were dropped, see ``calllist.py``); a call cut short alone keeps the
    engine's reason, ``length`` as OpenAI reports a truncated call."""
    if not complete or finish_reason not in ("stop", "length"):  # abort, error: as they are
        return finish_reason
    return "function_call" if structure.legacy_functions else "tool_calls"


@dataclass
class DeltaShaper:
    """Turns one choice's streamed text into chat deltas: plain content, or tool calls as
    the clients assemble them (the first delta of a call carries index, id, type and name;
    later ones carry argument fragments). Calls pass through a ``CallList`` first, so the
    stream carries the calls ``message_fields`` returns."""

    structure: ResolvedConstraint
    parser: ToolCallParser = field(default_factory=ToolCallParser)
    calls: CallList = field(default_factory=CallList)

    def feed(self, text: str) -> list[dict[str, Any]]:
        if not self.structure.tools:
            return [{"content": text}] if text else []
        return self._shape(self.calls.feed(self.parser.feed(text)))

    def finish(self, finish_reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The deltas still held back, and the finish reason to report."""
        if not self.structure.tools:
            return [], finish_reason
        events = self.calls.feed(self.parser.finish()) + self.calls.finish()
        deltas = self._shape(events)
        return deltas, _finish_reason(self.structure, self.calls.complete > 0, finish_reason)

    def _shape(self, events: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if isinstance(ev, ContentDelta):
                if ev.text:
                    out.append({"content": ev.text})
            elif isinstance(ev, ToolCallEnd):
                continue
            elif self.structure.legacy_functions:
                if isinstance(ev, ToolCallStart):
                    out.append({"function_call": {"name": ev.name, "arguments": ""}})
                else:
                    out.append({"function_call": {"arguments": ev.fragment}})
            elif isinstance(ev, ToolCallStart):
                call = {
                    "index": ev.index,
                    "id": call_id(),
                    "type": "function",
                    "function": {"name": ev.name, "arguments": ""},
                }
                out.append({"tool_calls": [call]})
            else:
                frag = {"index": ev.index, "function": {"arguments": ev.fragment}}
                out.append({"tool_calls": [frag]})
        return out
