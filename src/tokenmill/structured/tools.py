"""Tool definitions, tool choice, and the tool-call format and grammar.

The embedded model has no native tool-call format, so tokenmill uses the Hermes one (also
Qwen's), which small instruct models have seen most: one block per call,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

with blocks separated by a newline when there are several. The grammar makes every call's
``name`` one of the tools and its ``arguments`` follow that tool's ``parameters`` schema:

- ``required``: one or more calls (exactly one when ``parallel_tool_calls`` is false);
- a named function: exactly one call of that function;
- ``auto`` without a content constraint: free text, or free text followed by calls. Text
  runs until the first ``<tool_call>``; from there on the calls are enforced (a lazy lexeme
  ends the text at the marker), so a call can never slip through unchecked;
- ``auto`` with a content constraint: either content under that constraint, or calls.

``"x-guidance"`` keeps the JSON compact (see ``constraints.JSON_OPTIONS``); ``name`` comes
before ``arguments`` because llguidance emits properties in schema order, which lets a
streaming client see the function name before its arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tokenmill.structured._json import JSON_OPTIONS, dumps, load_schema
from tokenmill.structured.errors import InvalidConstraint

if TYPE_CHECKING:
    from tokenmill.structured.constraints import Content

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
# OpenAI's rule for function names.
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}

ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolSpec:
    """One function a model may call. ``parameters`` is its JSON schema as JSON text."""

    name: str
    description: str | None
    parameters: str
    param: str  # the request field its schema came from, for errors

    def schema(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.parameters)
        return result

    def call_schema(self) -> dict[str, Any]:
        """The schema of one call's JSON: ``{"name": <this name>, "arguments": {...}}``.

        Definitions move to the root so the parameters' ``#/$defs/...`` references still
        resolve once the schema sits under ``arguments``.
        """
        params = self.schema()
        defs: dict[str, Any] = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}
        return {
            "type": "object",
            "properties": {"name": {"const": self.name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            **defs,
            "x-guidance": JSON_OPTIONS,
        }

    def grammar(self) -> str:
        """A grammar of this tool's call alone (the compiler checks it on its own to blame
        the right tool when the whole tools grammar fails)."""
        return f"start: {_json_rule(self)}\n"

    def as_openai(self) -> dict[str, Any]:
        """The tool as OpenAI's ``{"type": "function", "function": {...}}``."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.schema()
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    """The effective ``tool_choice``: a mode, and the function's name when named."""

    mode: ToolChoiceMode
    name: str | None = None

    def describe(self) -> str:
        return f"naming {self.name!r}" if self.mode == "named" else repr(self.mode)


def parse_tools(value: Any, param: str = "tools", legacy: bool = False) -> tuple[ToolSpec, ...]:
    """Validate ``tools`` (or legacy ``functions``, a list of bare function objects)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidConstraint(f"{param} must be a list", param)
    specs: list[ToolSpec] = []
    for i, item in enumerate(value):
        path = f"{param}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidConstraint(f"{path} must be an object", path)
        if not legacy:
            if item.get("type", "function") != "function":
                raise InvalidConstraint(f"{path}.type must be 'function'", f"{path}.type")
            item = item.get("function")
            path += ".function"
            if not isinstance(item, Mapping):
                raise InvalidConstraint(f"{path} must be an object", path)
        specs.append(_tool_spec(item, path))
        if any(s.name == specs[-1].name for s in specs[:-1]):
            raise InvalidConstraint(
                f"{path}.name {specs[-1].name!r} is given twice", f"{path}.name"
            )
    return tuple(specs)


def _tool_spec(fn: Mapping[str, Any], path: str) -> ToolSpec:
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidConstraint(f"missing required parameter {path}.name", f"{path}.name")
    if not _NAME_RE.fullmatch(name):
        raise InvalidConstraint(
            f"{path}.name must be 1 to 64 letters, digits, underscores or dashes",
            f"{path}.name",
        )
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidConstraint(f"{path}.description must be a string", f"{path}.description")
    params = fn.get("parameters")
    if params is None:
        params = _EMPTY_PARAMETERS
    schema = load_schema(params, f"{path}.parameters")
    text = dumps(schema, f"{path}.parameters")
    return ToolSpec(name, description, text, f"{path}.parameters")


def parse_tool_choice(
    value: Any, specs: Sequence[ToolSpec], param: str = "tool_choice"
) -> ToolChoice | None:
    """The effective choice; None when no tool may be called and none was asked for.

    ``param`` "function_call" reads the legacy form (``"none"``, ``"auto"``, ``{"name"}``).
    """
    legacy = param == "function_call"
    if value is None:
        return ToolChoice("auto") if specs else None
    if isinstance(value, str):
        modes = ("none", "auto") if legacy else ("none", "auto", "required")
        if value not in modes:
            raise InvalidConstraint(
                f"{param} must be one of {', '.join(modes)} or a function", param
            )
        if value == "required" and not specs:
            raise InvalidConstraint(f"{param} 'required' needs tools", param)
        return ToolChoice(value) if specs else None  # type: ignore[arg-type]
    if not isinstance(value, Mapping):
        raise InvalidConstraint(f"{param} must be a string or an object", param)
    fn = value if legacy else value.get("function")
    if not legacy and value.get("type", "function") != "function":
        raise InvalidConstraint(f"{param}.type must be 'function'", param)
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        shape = '{"name": ...}' if legacy else '{"type": "function", "function": {"name": ...}}'
        raise InvalidConstraint(f"{param} must name a function as {shape}", param)
    if name not in {s.name for s in specs}:
        raise InvalidConstraint(f"{param} names {name!r}, which is not among the tools", param)
    return ToolChoice("named", name)


# -- grammar ----------------------------------------------------------------------------------


def _json_rule(spec: ToolSpec) -> str:
    return "%json " + json.dumps(spec.call_schema(), ensure_ascii=False, separators=(",", ":"))


def tools_grammar(
    specs: Sequence[ToolSpec], choice: ToolChoice, parallel: bool, content: Content | None
) -> str:
    """The llguidance grammar for tool calls under ``choice`` (see the module docstring)."""
    allowed = [s for s in specs if choice.mode != "named" or s.name == choice.name]
    lines = [
        'call_: "\\n" fn_ "\\n' + CALL_CLOSE + '"',
        "fn_: " + " | ".join(f"fn_{i}" for i in range(len(allowed))),
        *(f"fn_{i}: {_json_rule(s)}" for i, s in enumerate(allowed)),
    ]
    many = parallel and choice.mode != "named"
    lines.append('calls_: call_ ("\\n' + CALL_OPEN + '" call_)*' if many else "calls_: call_")
    if choice.mode != "auto":
        return "\n".join([f'start: "{CALL_OPEN}" calls_', *lines]) + "\n"
    if content is None:
        # Free text up to the first <tool_call>; a lazy lexeme ends exactly there.
        return (
            "\n".join(
                [
                    "start: TEXT_ | head_ calls_",
                    f"head_[lazy]: /(?s:.*){CALL_OPEN}/",
                    "TEXT_: /(?s:.*)/",
                    *lines,
                ]
            )
            + "\n"
        )
    head = f'start: content_ | "{CALL_OPEN}" calls_'
    if content.body:
        return "\n".join([head, f"content_: {content.body}", *content.defs, *lines]) + "\n"
    # A user's Lark grammar has its own start and names: embed it as a subgrammar.
    top = "\n".join([head, "content_: @content", *lines]) + "\n"
    return json.dumps(
        {
            "grammars": [
                {"lark_grammar": top},
                {"name": "content", "lark_grammar": content.grammar},
            ]
        },
        ensure_ascii=False,
    )


# -- prompt side ------------------------------------------------------------------------------


def tools_system_prompt(tools: Sequence[ToolSpec], choice: ToolChoice | None = None) -> str:
    """A system message describing the tools and the call format, for chat templates that
    cannot render tools themselves."""
    listing = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    mode = choice.mode if choice is not None else "auto"
    if mode == "named" and choice is not None:
        rule = f"You must call the function {choice.name!r}, once."
    elif mode == "required":
        rule = "You must call at least one function."
    else:
        rule = "If no function is needed, answer the user directly instead."
    return (
        "You can call functions to help with the user's request. The functions are "
        "described, as JSON, inside <tools></tools>:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call a function, reply with a JSON object holding its name and its arguments "
        f"inside {CALL_OPEN}{CALL_CLOSE} tags, one block per call:\n"
        f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments as a JSON '
        f"object>}}\n{CALL_CLOSE}\n{rule}"
    )


def format_tool_calls(calls: Sequence[tuple[str, str]]) -> str:
    """An assistant turn's ``(name, arguments JSON)`` calls as the model writes them, for
    rendering conversation history in the same format."""
    blocks = []
    for name, arguments in calls:
        try:
            args = json.dumps(json.loads(arguments), ensure_ascii=False)
        except (ValueError, RecursionError):
            args = json.dumps(arguments, ensure_ascii=False)  # not JSON: keep it as a string
        call = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args}}}'
        blocks.append(f"{CALL_OPEN}\n{call}\n{CALL_CLOSE}")
    return "\n".join(blocks)


def format_tool_result(content: str) -> str:
    """A tool message's content in the Hermes format, for templates without a tool role."""
    return f"<tool_response>\n{content}\n</tool_response>"
