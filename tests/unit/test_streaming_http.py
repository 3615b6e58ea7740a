"""Chat streaming's shape (chunks, usage, choices, logprobs, SSE framing, the client's stream
helper), in-process on the fake runner (tests/harness.py) through the official client. The
real-model file (tests/e2e/test_streaming.py) keeps the streams on a real socket."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import openai
import pytest
from starlette.testclient import TestClient

from tests.chat import chat_request, choice_chunks
from tests.harness import MODEL, AppStack

STORY = "Write a long story about a dog."
N_TOK = 12


@pytest.fixture(scope="module")
def http(stack: AppStack) -> TestClient:
    return stack.sync_client()


def req(max_tokens: int = N_TOK, **kw: Any) -> dict[str, Any]:
    return chat_request(MODEL, STORY, max_tokens, **kw)


@pytest.fixture(scope="module")
def full(client: openai.OpenAI) -> Any:
    """The non-streamed greedy answer every greedy stream must reproduce."""
    return client.chat.completions.create(**req())


def test_a_stream_is_the_answer_in_chunks(client: openai.OpenAI, full: Any) -> None:
    chunks = list(client.chat.completions.create(**req(stream=True)))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])  # the role comes once
    content = "".join(c.choices[0].delta.content or "" for c in choice_chunks(chunks))
    assert content == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in choice_chunks(chunks)]
    assert finishes[-1] == full.choices[0].finish_reason == "length"
    assert all(f is None for f in finishes[:-1])
    assert all(c.usage is None for c in chunks)  # without stream_options, no usage


def test_stream_include_usage(client: openai.OpenAI, full: Any) -> None:
    chunks = list(
        client.chat.completions.create(**req(stream=True, stream_options={"include_usage": True}))
    )
    *body, last = chunks
    assert body and all(c.usage is None for c in body)
    assert all(c.choices for c in body)
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens == N_TOK
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    content = "".join(c.choices[0].delta.content or "" for c in body)
    assert content == full.choices[0].message.content


def sse_events(http: TestClient, body: dict[str, Any]) -> list[str]:
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e.strip()]
    for e in events:
        assert e.startswith("data: "), e
    return [e[len("data: ") :] for e in events]


def test_raw_sse_ends_with_one_done(http: TestClient, full: Any) -> None:
    events = sse_events(http, req(stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "chat.completion.chunk" for o in objs)
    # include_usage: usage is present (null) on every chunk, filled only on the last.
    assert all("usage" in o for o in objs)
    assert all(o["usage"] is None for o in objs[:-1])
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == N_TOK
    text = "".join(o["choices"][0]["delta"].get("content") or "" for o in objs if o["choices"])
    assert text == full.choices[0].message.content


def test_raw_sse_without_usage_has_no_usage(http: TestClient) -> None:
    events = sse_events(http, req(stream=True, max_tokens=3))
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o.get("usage") is None for o in objs)
    assert all(o["choices"] for o in objs)


def test_stream_n2(client: openai.OpenAI) -> None:
    kw = {"n": 2, "temperature": 2.0, "seed": 7, "max_tokens": 6}
    nonstream = client.chat.completions.create(**req(**kw))
    chunks = list(client.chat.completions.create(**req(stream=True, **kw)))
    text: dict[int, str] = defaultdict(str)
    finishes: dict[int, list[tuple[int, str]]] = defaultdict(list)
    last_seen: dict[int, int] = {}
    for pos, ch in enumerate(chunks):
        for c in ch.choices:
            text[c.index] += c.delta.content or ""
            last_seen[c.index] = pos
            if c.finish_reason:
                finishes[c.index].append((pos, c.finish_reason))
    assert sorted(text) == [0, 1]
    for i in (0, 1):
        assert len(finishes[i]) == 1, finishes
        pos, reason = finishes[i][0]
        assert pos == last_seen[i]  # the finish chunk is that choice's last
        assert reason == nonstream.choices[i].finish_reason
        assert text[i] == nonstream.choices[i].message.content
    assert text[0] != text[1]


def test_stream_logprobs(client: openai.OpenAI) -> None:
    nonstream = client.chat.completions.create(**req(logprobs=True, top_logprobs=2))
    chunks = list(client.chat.completions.create(**req(stream=True, logprobs=True, top_logprobs=2)))
    entries = []
    text = ""
    for ch in choice_chunks(chunks):
        c = ch.choices[0]
        if c.delta.content:
            assert c.logprobs is not None and c.logprobs.content, c
            text += c.delta.content
        if c.logprobs is not None and c.logprobs.content:
            entries.extend(c.logprobs.content)
    assert len(entries) == N_TOK
    assert "".join(e.token for e in entries) == text
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    expected = nonstream.choices[0].logprobs.content
    assert [e.token for e in entries] == [e.token for e in expected]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in expected])


def test_stream_without_logprobs_has_none(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(**req(stream=True, max_tokens=3)))
    assert all(c.choices[0].logprobs is None for c in choice_chunks(chunks))


def test_the_clients_stream_helper_gets_the_final_completion(
    client: openai.OpenAI, full: Any
) -> None:
    # The helper refuses to parse a completion cut by length: a stop string ends this one.
    text = full.choices[0].message.content
    stop = text[5:7]
    kw = req(stop=[stop])
    expected = client.chat.completions.create(**kw)
    assert expected.choices[0].finish_reason == "stop"
    assert expected.choices[0].message.content == text[: text.index(stop)]
    deltas = []
    with client.chat.completions.stream(**kw) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == text[: text.index(stop)]
    assert final.choices[0].finish_reason == "stop"
    assert final.id.startswith("chatcmpl-")
