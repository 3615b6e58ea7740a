"""Where a list of tool calls ends: a repeat ends it, a call cut short after complete ones is
dropped, and a stream gives the same calls as the whole text without ever sending a call
that is then dropped."""

from __future__ import annotations

import random

import pytest

from tokenmill.structured import (
    CallList,
    CallWatcher,
    ContentDelta,
    GrammarCompiler,
    Matcher,
    ParsedCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallParser,
    ToolCallStart,
    call_key,
    final_calls,
    grammar_for,
    tokenizer_from_pieces,
)
from tokenmill.structured.toolparse import collect


def block(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


PARIS = block("get_weather", '{"city": "Paris"}')
ROME = block("get_weather", '{"city": "Rome"}')
TIME = block("get_time", '{"timezone": "UTC"}')
CUT_ARGS = '<tool_call>\n{"name": "get_time", "arguments": {"timez'
CUT_NAME = '<tool_call>\n{"name": "get_ti'


def calls_of(text: str) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in final_calls(text)[1]]


def test_a_repeated_call_ends_the_list() -> None:
    text = "\n".join([PARIS, ROME, PARIS, TIME])
    assert calls_of(text) == calls_of("\n".join([PARIS, ROME]))
    assert final_calls(text)[0] is None
    calls = CallList()
    parser = ToolCallParser()
    calls.feed(parser.feed(text))
    assert calls.ended and calls.complete == 2


def test_repeats_compare_parsed_arguments() -> None:
    spaced = block("get_weather", '{ "city" : "Paris" }')
    reordered = block("f", '{"b": 2, "a": 1}')
    assert len(calls_of("\n".join([PARIS, spaced]))) == 1
    assert len(calls_of("\n".join([block("f", '{"a": 1, "b": 2}'), reordered]))) == 1
    # Another name, or other arguments, is another call.
    assert len(calls_of("\n".join([PARIS, block("get_time", '{"city": "Paris"}')]))) == 2
    assert len(calls_of("\n".join([PARIS, block("get_weather", '{"city": "paris"}')]))) == 2
    assert call_key("f", '{"a": 1}') != call_key("f", '{"a": "1"}')


@pytest.mark.parametrize("cut", [CUT_ARGS, CUT_NAME, "<tool_call>\n", "<tool_"])
def test_a_call_cut_short_after_complete_ones_is_dropped(cut: str) -> None:
    for before in ([PARIS], [PARIS, TIME]):
        text = "\n".join([*before, cut])
        assert final_calls(text) == final_calls("\n".join(before))
        assert all(c.complete for c in final_calls(text)[1])


def test_a_call_cut_short_alone_is_kept_incomplete() -> None:
    """The first call streams as it comes, so cut short alone it is what the client got;
    the finish reason (length) says it is truncated, as OpenAI's does."""
    assert final_calls(CUT_ARGS) == (
        None,
        [ParsedCall("get_time", '{"timez', complete=False)],
    )
    # Cut before its name it is not a call at all: the text comes back as it is.
    assert final_calls(CUT_NAME) == (CUT_NAME, [])


def test_content_before_calls_is_kept() -> None:
    assert final_calls("Let me check.\n" + PARIS + "\n" + CUT_NAME)[0] == "Let me check."


TEXTS = [
    PARIS,
    "\n".join([PARIS, ROME, PARIS, TIME]),
    "\n".join([PARIS, ROME, CUT_ARGS]),
    "\n".join([PARIS, PARIS]),
    "\n".join([PARIS, ROME, TIME, CUT_NAME]),
    CUT_ARGS,
    "Sure.\n" + "\n".join([TIME, TIME]),
]


def streamed(pieces: list[str]) -> list[ToolCallEvent]:
    parser, calls = ToolCallParser(), CallList()
    events: list[ToolCallEvent] = []
    for piece in pieces:
        events += calls.feed(parser.feed(piece))
    return events + calls.feed(parser.finish()) + calls.finish()


@pytest.mark.parametrize("text", TEXTS)
def test_a_stream_gives_the_calls_of_the_whole_text(text: str) -> None:
    """Whatever the split. Since the assembled stream equals the whole-text result, a call
    that is dropped (a repeat, or cut short) was never sent, not even its start."""
    whole = final_calls(text)
    assert collect(streamed(list(text))) == whole
    rng = random.Random(len(text))
    for _ in range(100):
        cuts = sorted(rng.sample(range(len(text) + 1), min(5, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert collect(streamed(pieces)) == whole


def test_the_first_call_streams_and_later_ones_come_whole() -> None:
    events = streamed(list("\n".join([PARIS, ROME, CUT_ARGS])))
    first = [e for e in events if not isinstance(e, ContentDelta) and e.index == 0]
    assert sum(isinstance(e, ToolCallArguments) for e in first) > 3  # fragment by fragment
    later = [e for e in events if not isinstance(e, ContentDelta) and e.index == 1]
    assert later == [
        ToolCallStart(1, "get_weather"),
        ToolCallArguments(1, '{"city": "Rome"}'),
        ToolCallEnd(1),
    ]
    assert not any(isinstance(e, ContentDelta) for e in events)
    assert max(e.index for e in events if not isinstance(e, ContentDelta)) == 1


# -- the engine's side: the matcher ends the grammar at a repeat ------------------------------

CHARS = sorted(set("".join(TEXTS) + "\n"))
EOS = 0
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def char_matcher() -> tuple[Matcher, dict[str, int]]:
    """A matcher of required parallel calls over a vocabulary of one character per token."""
    pieces = [b""] + [c.encode() for c in CHARS]
    tokenizer = tokenizer_from_pieces(pieces, [EOS])
    constraint = grammar_for(tools=TOOLS, tool_choice="required")
    assert constraint is not None
    grammar = GrammarCompiler(tokenizer, timeout=10.0).compile(constraint)
    assert grammar.decode is not None
    return grammar.matcher(), {c: i + 1 for i, c in enumerate(CHARS)}


def test_the_matcher_finishes_as_soon_as_a_call_repeats() -> None:
    m, ids = char_matcher()
    text = "\n".join([PARIS, ROME, PARIS])
    end = len(text) - len("\n</tool_call>")  # just past the repeat's closing brace
    twin = None
    for i, ch in enumerate(text[:end]):
        assert not m.is_finished(), i
        assert m.accept(ids[ch]), i
        if i == len(PARIS):
            twin = m.fork()
    assert m.is_finished() and m.error is None
    assert not m.accept(ids["\n"])
    # A fork taken earlier follows its own tokens: here it goes on to a new call.
    assert twin is not None
    for ch in text[len(PARIS) + 1 : len("\n".join([PARIS, ROME]))]:
        assert twin.accept(ids[ch])
    assert not twin.is_finished()
    # Rolling back the closing brace undoes the end.
    m.rollback(1)
    assert not m.is_finished()


def test_the_watcher_replays_after_a_rollback() -> None:
    _, ids = char_matcher()
    pieces = {i: c.encode() for c, i in ids.items()}

    def decode(tokens: list[int]) -> bytes:
        return b"".join(pieces[t] for t in tokens)

    w = CallWatcher(decode)
    for ch in "\n".join([PARIS, PARIS]):
        w.feed(ids[ch])
    assert w.ended
    w.rollback(len("\n</tool_call>") + 1)
    assert not w.ended
    w.feed(ids["}"])
    assert w.ended
