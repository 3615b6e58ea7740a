"""Structured output: request constraints -> llguidance grammars -> token masks; tool calls.

``grammar_for`` turns request fields into one ``Constraint``; a ``GrammarCompiler`` (one per
model, on ``make_tokenizer(info)``) compiles it once into a ``CompiledGrammar``, which gives
each sequence a ``Matcher``; ``apply_masks`` masks a batch's logits. Tool calls use the
Hermes format (``tools.py``) and are read back by ``parse_tool_calls`` or, streaming, by a
``ToolCallParser``; a ``CallList`` decides where a list of calls ends (``calllist.py``).
"""

from tokenmill.structured.calllist import CallList, CallWatcher, call_key, final_calls
from tokenmill.structured.compiler import CompiledGrammar, GrammarCompiler
from tokenmill.structured.constraints import Constraint, grammar_for
from tokenmill.structured.matcher import Matcher, allocate_bitmask, apply_bitmask, apply_masks
from tokenmill.structured.tokenizer import make_tokenizer, tokenizer_from_pieces
from tokenmill.structured.toolparse import (
    ContentDelta,
    ParsedCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallParser,
    ToolCallStart,
    parse_tool_calls,
)
from tokenmill.structured.tools import (
    ToolChoice,
    ToolSpec,
    format_tool_calls,
    format_tool_result,
    parse_tool_choice,
    parse_tools,
    tools_system_prompt,
)

__all__ = [
    "CallList",
    "CallWatcher",
    "CompiledGrammar",
    "Constraint",
    "ContentDelta",
    "GrammarCompiler",
    "Matcher",
    "ParsedCall",
    "ToolCallArguments",
    "ToolCallEnd",
    "ToolCallEvent",
    "ToolCallParser",
    "ToolCallStart",
    "ToolChoice",
    "ToolSpec",
    "allocate_bitmask",
    "apply_bitmask",
    "apply_masks",
    "call_key",
    "final_calls",
    "format_tool_calls",
    "format_tool_result",
    "grammar_for",
    "make_tokenizer",
    "parse_tool_calls",
    "parse_tool_choice",
    "parse_tools",
    "tokenizer_from_pieces",
    "tools_system_prompt",
]
