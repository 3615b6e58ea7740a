"""Chat streaming on a real socket and the real model, through the sync and async official
clients. The shape of streams (usage, n, logprobs, SSE framing, the stream helper) is tested
in-process: tests/unit/test_streaming_http.py."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.chat import chat_request, choice_chunks
from tests.e2e.conftest import MODEL

STORY = "Write a long story about a dog."
N_TOK = 12


def req(max_tokens: int = N_TOK, **kw: Any) -> dict[str, Any]:
    return chat_request(MODEL, STORY, max_tokens, **kw)


@pytest.fixture(scope="module")
def full(client: openai.OpenAI) -> Any:
    """The non-streamed greedy answer every greedy stream must reproduce."""
    return client.chat.completions.create(**req())


def test_stream_matches_non_streamed(client: openai.OpenAI, full: Any) -> None:
    chunks = list(client.chat.completions.create(**req(stream=True)))
    assert chunks
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in choice_chunks(chunks))
    assert content == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in choice_chunks(chunks)]
    assert finishes[-1] == full.choices[0].finish_reason == "length"
    assert all(f is None for f in finishes[:-1])
    # Without stream_options no chunk carries usage.
    assert all(c.usage is None for c in chunks)


async def test_async_stream(aclient: openai.AsyncOpenAI, full: Any) -> None:
    stream = await aclient.chat.completions.create(**req(stream=True))
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in choice_chunks(chunks))
    assert content == full.choices[0].message.content
    assert choice_chunks(chunks)[-1].choices[0].finish_reason == "length"
