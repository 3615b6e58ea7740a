"""Tool-call parsing: whole text, and streamed in every split, give the same calls."""

from __future__ import annotations

import json
import random

import pytest

from tokenmill.structured import (
    ContentDelta,
    ParsedCall,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallParser,
    ToolCallStart,
    parse_tool_calls,
)
from tokenmill.structured.toolparse import collect

ONE = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TWO = (
    '<tool_call>\n{"name": "add", "arguments": {"x": 1, "y": [2, {"z": "}"}]}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a \\"<tool_call>\\" b"}}\n'
    "</tool_call>"
)

TEXTS = [
    "",
    "Hello there!",
    "  leading and trailing whitespace \n",
    "a < b but <tool is not a call, nor <tool_cal",
    ONE,
    TWO,
    "Let me check.\n" + ONE,
    ONE + "\nDone.",
    '<tool_call>\n{"arguments": {"q": 1}, "name": "search"}\n</tool_call>',  # name second
    '<tool_call>\n{ "name" : "f" , "arguments" : { "a" : 1 } }\n</tool_call>',  # spaced out
    '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>',  # string args
    '<tool_call>\n{"name": "f", "arguments": null}\n</tool_call>',
    '<tool_call>\n{"name": "f"}\n</tool_call>',  # no arguments
    "<tool_call>\nnot json at all\n</tool_call> then text",
    '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name: not a call
    '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2',  # cut short mid-arguments
    '<tool_call>\n{"na',  # cut short before the name
    "text then <tool_call>",
    "see <tool_call>\nnope\n</tool_call>",
    '<tool_call>\n{"name": "ünï", "arguments": {"ключ": "значение 🐢"}}\n</tool_call>',
]


def check_events(events: list[ToolCallEvent]) -> None:
    """Starts come in index order; arguments and then at most one end follow, for the call
    last started only."""
    started, open_ = 0, False
    for ev in events:
        if isinstance(ev, ToolCallStart):
            assert ev.index == started
            started, open_ = started + 1, True
        elif isinstance(ev, ToolCallArguments):
            assert ev.index == started - 1 and ev.fragment and open_
        elif isinstance(ev, ToolCallEnd):
            assert ev.index == started - 1 and open_
            open_ = False


def stream(pieces: list[str]) -> tuple[str | None, list[ParsedCall]]:
    parser = ToolCallParser()
    events: list[ToolCallEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    check_events(events)
    return collect(events)


def test_one_call() -> None:
    assert parse_tool_calls(ONE) == (None, [ParsedCall("get_weather", '{"city": "Paris"}')])


def test_two_calls_with_tricky_strings() -> None:
    content, calls = parse_tool_calls(TWO)
    assert content is None
    assert [c.name for c in calls] == ["add", "get_weather"]
    assert json.loads(calls[0].arguments) == {"x": 1, "y": [2, {"z": "}"}]}
    assert json.loads(calls[1].arguments) == {"city": 'a "<tool_call>" b'}


def test_plain_text_is_content_verbatim() -> None:
    for text in ["Hello there!", "  padded \n", "a < b, <tool_cal", ""]:
        assert parse_tool_calls(text) == (text, [])


def test_text_around_calls() -> None:
    assert parse_tool_calls("Let me check.\n" + ONE)[0] == "Let me check."
    assert parse_tool_calls(ONE + "\nDone.")[0] == "Done."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TEXTS[8], [ParsedCall("search", '{"q": 1}')]),
        (TEXTS[9], [ParsedCall("f", '{ "a" : 1 }')]),
        (TEXTS[10], [ParsedCall("f", '{"a": 1}')]),
        (TEXTS[11], [ParsedCall("f", "null")]),
        (TEXTS[12], [ParsedCall("f", "{}")]),
        (TEXTS[15], [ParsedCall("f", '{"a": [1, 2', complete=False)]),
    ],
)
def test_call_shapes(text: str, expected: list[ParsedCall]) -> None:
    assert parse_tool_calls(text)[1] == expected


def test_malformed_blocks_are_content() -> None:
    assert parse_tool_calls(TEXTS[13]) == (TEXTS[13], [])
    assert parse_tool_calls(TEXTS[14]) == (TEXTS[14], [])
    assert parse_tool_calls(TEXTS[16]) == (TEXTS[16], [])
    assert parse_tool_calls("text then <tool_call>") == ("text then <tool_call>", [])
    text = "see <tool_call>\nnope\n</tool_call>"
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize("text", TEXTS)
def test_every_split_matches_the_whole(text: str) -> None:
    whole = parse_tool_calls(text)
    for cut in range(len(text) + 1):
        assert stream([text[:cut], text[cut:]]) == whole, cut
    assert stream(list(text)) == whole  # one character at a time
    rng = random.Random(len(text))
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert stream(pieces) == whole


def test_stream_events_look_like_openai_deltas() -> None:
    parser = ToolCallParser()
    events: list[ToolCallEvent] = []
    for ch in "Sure.\n" + TWO:
        events += parser.feed(ch)
    events += parser.finish()
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    before = events[: events.index(starts[0])]
    assert "".join(e.text for e in before if isinstance(e, ContentDelta)) == "Sure."
    assert starts == [ToolCallStart(0, "add"), ToolCallStart(1, "get_weather")]
    # The name comes before any argument text, and arguments arrive in many fragments.
    first_args = events.index(starts[0]) + 1
    assert isinstance(events[first_args], ToolCallArguments)
    assert sum(isinstance(e, ToolCallArguments) for e in events) > 10


def test_content_is_not_held_back_longer_than_needed() -> None:
    parser = ToolCallParser()
    assert parser.feed("Hello <to") == [ContentDelta("Hello")]
    assert parser.feed("y> world") == [ContentDelta(" <toy> world")]
    assert parser.finish() == []
