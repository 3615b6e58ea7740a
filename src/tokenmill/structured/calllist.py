"""Where a list of tool calls ends, and which of its calls a client gets.

A small model asked for calls may open call after call (the grammar lets it: after each call
it may end or open another), often repeating itself, until ``max_tokens`` cuts the last one
in half. So a list of calls ends early on two signs:

- a call that repeats an earlier one (same name, equal arguments) ends the list: it and
  anything after it are dropped, and the engine stops the sequence as soon as it is complete
  (``CallWatcher``), so no tokens go to further repeats;
- a call cut short (the output ended inside its JSON) is dropped when complete calls come
  before it. The first call is never dropped: cut short alone it is all the client gets,
  with the engine's finish reason (``length``), as OpenAI returns a truncated call.

``CallList`` applies both rules to the parser's events, in order, so a stream and a whole
output give the same calls by construction. A stream cannot take back what it sent, so every
call after the first is held back until it is complete and known not to be a repeat, then
sent at once; the first streams as it comes. Text after the first call is part of a call
cut short before its name (the grammar allows no text after calls) and is dropped with it.
"""

from __future__ import annotations

import codecs
import copy
import json
from collections.abc import Callable

from tokenmill.structured.toolparse import (
    ContentDelta,
    ParsedCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallParser,
    ToolCallStart,
    collect,
)


def call_key(name: str, arguments: str) -> tuple[str, str]:
    """What makes two calls the same: the name, and the arguments as parsed JSON (so key
    order and spacing do not matter)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return name, arguments
    return name, json.dumps(value, sort_keys=True, ensure_ascii=False)


class CallList:
    """Filters one choice's parser events down to what the client gets (module docstring).

    ``feed`` takes events as the parser gives them and returns those to pass on; ``finish``
    is called once the output has ended. ``complete`` counts the complete calls passed on;
    ``ended`` is set when a repeated call ended the list.
    """

    def __init__(self) -> None:
        self.complete = 0
        self.ended = False
        self._calls = 0  # calls the parser started
        self._seen: set[tuple[str, str]] = set()
        self._name = ""
        self._args: list[str] = []  # the current call's argument text, for its key
        self._held: list[ToolCallEvent] = []  # the current call, when it is not the first

    def feed(self, events: list[ToolCallEvent]) -> list[ToolCallEvent]:
        out: list[ToolCallEvent] = []
        for ev in events:
            if self.ended:
                break
            self._event(ev, out)
        return out

    def finish(self) -> list[ToolCallEvent]:
        """Nothing more comes: a call still held back was cut short, and is dropped."""
        self._held = []
        return []

    def _event(self, ev: ToolCallEvent, out: list[ToolCallEvent]) -> None:
        if isinstance(ev, ContentDelta):
            if not self._calls:  # after a call, text is a call cut short before its name
                out.append(ev)
            return
        if isinstance(ev, ToolCallStart):
            self._calls += 1
            self._name, self._args = ev.name, []
        elif isinstance(ev, ToolCallArguments):
            self._args.append(ev.fragment)
        if self._calls == 1:  # the first call streams as it comes
            out.append(ev)
        else:
            self._held.append(ev)
        if isinstance(ev, ToolCallEnd):
            self._end_call(out)

    def _end_call(self, out: list[ToolCallEvent]) -> None:
        key = call_key(self._name, "".join(self._args))
        held, self._held = self._held, []
        if key in self._seen:
            self.ended = True
            return
        self._seen.add(key)
        self.complete += 1
        if held:  # sent whole: its start, all its arguments in one fragment, its end
            index, args = self._calls - 1, "".join(self._args)
            out.append(ToolCallStart(index, self._name))
            if args:
                out.append(ToolCallArguments(index, args))
            out.append(ToolCallEnd(index))


def final_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """The content and calls a client gets for a whole output: what a stream through a
    ``CallList`` assembles to."""
    parser, calls = ToolCallParser(), CallList()
    return collect(calls.feed(parser.feed(text) + parser.finish()) + calls.finish())


class CallWatcher:
    """The engine's view: follows one sequence's tokens through the parser and a
    ``CallList``, to stop the sequence as soon as a repeated call ends the list."""

    def __init__(self, decode: Callable[[list[int]], bytes]) -> None:
        self._decode = decode
        self._tokens: list[int] = []  # to replay after a rollback
        self._reset()

    def _reset(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parser = ToolCallParser()
        self._calls = CallList()

    @property
    def ended(self) -> bool:
        return self._calls.ended

    def feed(self, token_id: int) -> None:
        self._tokens.append(token_id)
        if not self.ended:
            text = self._text.decode(self._decode([token_id]))
            self._calls.feed(self._parser.feed(text))

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` tokens (rare: replays the rest from the start)."""
        kept = self._tokens[: len(self._tokens) - n]
        self._tokens = []
        self._reset()
        for token_id in kept:
            self.feed(token_id)

    def fork(self) -> CallWatcher:
        """An independent copy at the same position (the tokenizer is shared)."""
        return copy.deepcopy(self, {id(self._decode): self._decode})
