"""Tool calls out of generated text, whole or as it streams.

``ToolCallParser`` takes text deltas and returns events: content text, the start of a call
(its index and name) and fragments of its arguments, in the order OpenAI streams
``tool_calls`` deltas, then the end of the call once its JSON object is closed (a call
without an end was cut short). ``parse_tool_calls`` runs the same parser over the whole
text, so a stream's concatenated arguments are by construction exactly the non-stream result.

A call's arguments are the JSON text of its ``arguments`` value as the model wrote it (the
grammar keeps that compact). Whitespace around call blocks is not content. Anything that is
not a well-formed call (no name, not JSON) is passed through as content, verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tokenmill.structured.tools import CALL_CLOSE, CALL_OPEN


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    index: int
    fragment: str


@dataclass(frozen=True)
class ToolCallEnd:
    index: int


ToolCallEvent = ContentDelta | ToolCallStart | ToolCallArguments | ToolCallEnd


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text
    complete: bool = True  # False: the output ended inside the call's JSON


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """The message content (None when there are calls and no other text) and the calls."""
    parser = ToolCallParser()
    return collect(parser.feed(text) + parser.finish())


def collect(events: list[ToolCallEvent]) -> tuple[str | None, list[ParsedCall]]:
    """Assemble events into (content, calls), as a client assembles the stream."""
    content: list[str] = []
    names: list[str] = []
    args: list[list[str]] = []
    ended: set[int] = set()
    for ev in events:
        if isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, ToolCallStart):
            names.append(ev.name)
            args.append([])
        elif isinstance(ev, ToolCallEnd):
            ended.add(ev.index)
        else:
            args[ev.index].append(ev.fragment)
    calls = [
        ParsedCall(n, "".join(a), i in ended)
        for i, (n, a) in enumerate(zip(names, args, strict=True))
    ]
    text = "".join(content)
    return (text or None) if calls else text, calls


class _CallScanner:
    """Scans one call block's JSON object incrementally, noting its name and arguments.

    Only the top level is interpreted; nested values are skipped by bracket depth. ``bad``
    means the block is not ``{"name": "...", "arguments": ...}``-shaped JSON.
    """

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.state = "start"
        self.depth = 0
        self.in_str = self.esc = False
        self.key: str | None = None
        self.tok_start = 0  # where the current key or top-level value began
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.end: int | None = None  # just past the closing brace

    @property
    def bad(self) -> bool:
        return self.state == "bad"

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, text: str) -> None:
        self.text += text
        while self.pos < len(self.text) and self.state not in ("done", "bad"):
            self._step(self.text[self.pos])
            self.pos += 1

    def _step(self, c: str) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif c == "\\":
                self.esc = True
            elif c == '"':
                self.in_str = False
                if self.state == "key":
                    key = self._json(self.tok_start, self.pos + 1)
                    self.key = key if isinstance(key, str) else None
                    self.state = "colon"
                elif self.state == "string":
                    self._value_end(self.pos + 1)
            return
        if self.state == "nested":
            self._nested(c)
        elif self.state == "primitive" and (c in ",}" or c.isspace()):
            self._value_end(self.pos)
            if not c.isspace():
                self._top(c)
        elif self.state != "primitive" and not c.isspace():
            self._top(c)

    def _top(self, c: str) -> None:
        state = self.state
        if state == "start":
            self.state, self.depth = ("key", 1) if c == "{" else ("bad", 0)
        elif state == "key" and c == '"':
            self.in_str, self.tok_start = True, self.pos
        elif state in ("key", "after") and c == "}":
            self.state, self.depth, self.end = "done", 0, self.pos + 1
        elif state == "colon":
            self.state = "value" if c == ":" else "bad"
        elif state == "value":
            self.tok_start = self.pos
            if self.key == "arguments":
                self.args_start = self.pos
            if c == '"':
                self.state, self.in_str = "string", True
            elif c in "{[":
                self.state, self.depth = "nested", 2
            else:
                self.state = "primitive"
        elif state == "after" and c == ",":
            self.state = "key"
        elif state != "primitive":
            self.state = "bad"

    def _nested(self, c: str) -> None:
        if c == '"':
            self.in_str = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 1:
                self._value_end(self.pos + 1)

    def _value_end(self, end: int) -> None:
        self.state = "after"
        if self.key == "name":
            name = self._json(self.tok_start, end)
            if isinstance(name, str):
                self.name = name
            else:
                self.state = "bad"
        elif self.key == "arguments":
            self.args_end = end

    def _json(self, start: int, end: int) -> object:
        try:
            return json.loads(self.text[start:end])
        except ValueError:
            return None

    def arguments_so_far(self) -> str:
        """The raw arguments text scanned so far ("" before it starts)."""
        if self.args_start is None:
            return ""
        end = self.args_end if self.args_end is not None else self.pos
        return self.text[self.args_start : end]


class ToolCallParser:
    """Incremental parser: ``feed`` text deltas, then ``finish`` once; both return events."""

    def __init__(self) -> None:
        self._buf = ""  # text not yet interpreted
        self._call: _CallScanner | None = None  # inside a <tool_call> block
        self._pending_ws = ""  # whitespace held back: it is content only if text follows
        self._ws_before_block = ""  # restored if the block turns out not to be a call
        self._after_call = False
        self._calls = 0
        self._started = False  # the current block's call was announced
        self._ended = False  # ... and its end
        self._sent_args = 0  # characters of the current call's arguments sent

    def feed(self, delta: str) -> list[ToolCallEvent]:
        self._buf += delta
        out: list[ToolCallEvent] = []
        progressed = True
        while progressed:
            progressed = self._block(out) if self._call is not None else self._text(out)
        return out

    def finish(self) -> list[ToolCallEvent]:
        out: list[ToolCallEvent] = []
        call = self._call
        if call is not None and not self._started:
            # A block cut short before its name: what was written is content after all.
            self._pending_ws = self._ws_before_block
            self._content(out, CALL_OPEN + call.text + self._buf)
        elif call is None:
            self._content(out, self._buf)
        if not self._calls and not self._started and self._pending_ws:
            out.append(ContentDelta(self._pending_ws))
        self._buf = self._pending_ws = ""
        self._call = None
        return out

    # -- outside blocks -----------------------------------------------------------------------

    def _text(self, out: list[ToolCallEvent]) -> bool:
        at = self._buf.find(CALL_OPEN)
        if at >= 0:
            self._content(out, self._buf[:at])
            self._ws_before_block, self._pending_ws = self._pending_ws, ""
            self._buf = self._buf[at + len(CALL_OPEN) :]
            self._call, self._started, self._ended = _CallScanner(), False, False
            self._sent_args = 0
            return True
        keep = _partial_suffix(self._buf, CALL_OPEN)
        self._content(out, self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _content(self, out: list[ToolCallEvent], text: str) -> None:
        text = self._pending_ws + text
        if self._after_call:
            text = text.lstrip()
        body = text.rstrip()
        self._pending_ws = text[len(body) :]
        if body:
            out.append(ContentDelta(body))
            self._after_call = False

    # -- inside a block -----------------------------------------------------------------------

    def _block(self, out: list[ToolCallEvent]) -> bool:
        call = self._call
        assert call is not None
        if not call.done and not call.bad:
            call.feed(self._buf)
            self._buf = ""
            self._announce(out, call)
        if call.done:
            rest = call.text[call.end :] + self._buf
            return self._close(out, call, rest)
        if call.bad:
            rest = call.text + self._buf
            at = rest.find(CALL_CLOSE)
            if at < 0:
                call.text, self._buf = rest, ""
                return False
            if not self._started:
                self._pending_ws = self._ws_before_block
                self._content(out, CALL_OPEN + rest[: at + len(CALL_CLOSE)])
            self._end_block(rest[at + len(CALL_CLOSE) :])
            return True
        return False

    def _announce(self, out: list[ToolCallEvent], call: _CallScanner) -> None:
        """Send the call's start once its name is known, then its arguments as they come."""
        if call.name is None:
            return
        index = self._calls
        if not self._started:
            self._started = True
            out.append(ToolCallStart(index, call.name))
        args = call.arguments_so_far()
        if args.startswith('"'):  # a JSON string: send its decoded text once it is complete
            if call.args_end is not None and self._sent_args == 0:
                value = json.loads(args)
                out.append(ToolCallArguments(index, value if isinstance(value, str) else args))
                self._sent_args = len(args)
            return
        if len(args) > self._sent_args:
            out.append(ToolCallArguments(index, args[self._sent_args :]))
            self._sent_args = len(args)

    def _close(self, out: list[ToolCallEvent], call: _CallScanner, rest: str) -> bool:
        """After the object: whitespace, then the closing tag."""
        if not self._started:  # an object without a name is not a call
            call.state = "bad"
            call.text, self._buf = call.text[: call.end] + rest, ""
            return True
        if not self._ended:
            if call.args_start is None and self._sent_args == 0:
                out.append(ToolCallArguments(self._calls, "{}"))
                self._sent_args = 2
            out.append(ToolCallEnd(self._calls))
            self._ended = True
        stripped = rest.lstrip()
        if stripped.startswith(CALL_CLOSE):
            self._end_block(stripped[len(CALL_CLOSE) :])
            return True
        at = rest.find(CALL_CLOSE)
        if at >= 0:  # stray text before the closing tag: dropped with the block
            self._end_block(rest[at + len(CALL_CLOSE) :])
            return True
        call.text, self._buf = call.text[: call.end] + rest, ""
        return False

    def _end_block(self, rest: str) -> None:
        if self._started:
            self._calls += 1
            self._after_call = True
        self._call = None
        self._buf = rest


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
