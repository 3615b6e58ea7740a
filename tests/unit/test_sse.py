"""SSE framing: a chunk rendered with the stream's cached head is the envelope's bytes."""

from __future__ import annotations

import json

import pytest

from tokenmill.serving.sse import ResponseMeta, event


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunk_event_is_the_envelope_as_one_event(include_usage: bool) -> None:
    meta = ResponseMeta(
        "chatcmpl-1", "chat.completion.chunk", 7, 'm "q"', "fp_x", "default", include_usage
    )
    choices = [{"index": 0, "delta": {"content": "é\n"}, "logprobs": None, "finish_reason": None}]
    for fields in ({}, {"prompt_logprobs": [None, {"1": 2}]}, {"usage": {"total_tokens": 3}}):
        got = meta.chunk_event(choices, **fields)
        assert got == event(meta.envelope(choices=choices, **fields))
        assert json.loads(got.removeprefix("data: "))["choices"] == choices
