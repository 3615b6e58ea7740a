"""Tool calls in responses: the finish reason a list of calls ends with, and a stream that the
official client assembles into the very message of the non-streamed response."""

from __future__ import annotations

import random
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from tokenmill.serving.structured import DeltaShaper, ResolvedConstraint, message_fields
from tokenmill.structured import grammar_for, parse_tool_calls

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]
REQUIRED = ResolvedConstraint(grammar_for(tools=TOOLS, tool_choice="required"))
LEGACY = ResolvedConstraint(
    grammar_for(functions=[t["function"] for t in TOOLS], function_call={"name": "get_time"}),
    legacy_functions=True,
)


def block(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


PARIS = block("get_weather", '{"city": "Paris"}')
ROME = block("get_weather", '{"city": "Rome"}')
CUT = '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Eu'


def fields(text: str, engine_reason: str) -> tuple[list[tuple[str, str]], Any, str | None]:
    msg, reason = message_fields(text, REQUIRED, engine_reason)
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]]
    return calls, msg["content"], reason


@pytest.mark.parametrize(
    ("text", "engine_reason", "calls", "reason"),
    [
        # The engine stopped the sequence at a repeat: the calls before it.
        ("\n".join([PARIS, ROME, PARIS]), "stop", [PARIS, ROME], "tool_calls"),
        # max_tokens cut the third call: the two complete ones, and they are all there is.
        ("\n".join([PARIS, ROME, CUT]), "length", [PARIS, ROME], "tool_calls"),
        ("\n".join([PARIS, CUT[:14]]), "length", [PARIS], "tool_calls"),
        # Cut short alone: the truncated call, reported as such (as OpenAI does).
        (CUT, "length", [CUT], "length"),
    ],
)
def test_where_the_list_ends(text: str, engine_reason: str, calls: list[str], reason: str) -> None:
    got_calls, content, got_reason = fields(text, engine_reason)
    expected = [(c.name, c.arguments) for b in calls for c in parse_tool_calls(b)[1]]
    assert (got_calls, got_reason) == (expected, reason)
    assert content is None


def test_abort_and_error_keep_their_reason() -> None:
    for reason in ("abort", "error"):
        assert fields(PARIS, reason)[2] == reason


def assemble(text: str, structure: ResolvedConstraint, engine_reason: str, seed: int) -> Any:
    """Stream ``text`` in random pieces through a ``DeltaShaper`` into the openai client's
    own accumulator; return its final message and finish reason."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(8, len(text) - 1)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    shaper = DeltaShaper(structure)
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    for piece in pieces:
        deltas += shaper.feed(piece)
    held, reason = shaper.finish(engine_reason)
    state = ChatCompletionStreamState()
    chunks = [(d, None) for d in deltas + held] + [({}, reason)]
    for delta, finish in chunks:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        state.handle_chunk(
            ChatCompletionChunk.model_validate(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [choice],
                }
            )
        )
    # The snapshot: the final completion would refuse (raise) on a "length" finish.
    final = state.current_completion_snapshot.choices[0]
    return final.message, final.finish_reason


@pytest.mark.parametrize(
    ("text", "engine_reason"),
    [
        ("\n".join([PARIS, ROME, PARIS]), "stop"),
        ("\n".join([PARIS, ROME, CUT]), "length"),
        ("\n".join([PARIS, CUT[:14]]), "length"),
        (CUT, "length"),
        ("\n".join([PARIS, ROME]), "stop"),
    ],
)
def test_the_client_assembles_the_stream_into_the_response(text: str, engine_reason: str) -> None:
    msg, reason = message_fields(text, REQUIRED, engine_reason)
    want = [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]]
    for seed in range(20):
        got, got_reason = assemble(text, REQUIRED, engine_reason, seed)
        calls = [(c.function.name, c.function.arguments) for c in got.tool_calls or []]
        assert (calls, got_reason) == (want, reason), seed
        assert not got.content


def test_legacy_function_call_ends_the_same_way() -> None:
    text = block("get_time", '{"timezone": "UTC"}')
    msg, reason = message_fields(text, LEGACY, "stop")
    assert reason == "function_call"
    assert msg["function_call"] == {"name": "get_time", "arguments": '{"timezone": "UTC"}'}
    assert message_fields(CUT, LEGACY, "length")[1] == "length"
