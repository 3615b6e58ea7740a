"""Chat helpers the in-process and the real-server tests share (as tests/errors.py does for
error shapes)."""

from __future__ import annotations

from typing import Any

import pytest


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def chat_request(model: str, content: Any, max_tokens: int, **kw: Any) -> dict[str, Any]:
    """Keyword arguments for ``chat.completions.create`` (or a raw body): one user message,
    greedy unless ``kw`` says otherwise."""
    return {
        "model": model, "messages": user(content), "max_tokens": max_tokens, "temperature": 0,
        **kw,
    }  # fmt: skip


def text(r: Any, i: int = 0) -> str:
    """Choice ``i``'s message content, which must be there."""
    content = r.choices[i].message.content
    assert isinstance(content, str)
    return content


def choice_chunks(chunks: list[Any]) -> list[Any]:
    """The chunks of a stream that carry choices (not the final usage chunk)."""
    return [c for c in chunks if c.choices]


def assert_greedy_logprobs(r: Any, greedy: str, n_tokens: int, top: int) -> None:
    """A greedy chat answer with ``logprobs`` and ``top_logprobs=top``: one entry per token,
    spelling the text in tokens and in bytes, each the most likely of its sorted top list."""
    c = r.choices[0]
    assert c.message.content == greedy
    assert c.logprobs is not None and c.logprobs.content is not None
    entries = c.logprobs.content
    assert r.usage is not None and len(entries) == r.usage.completion_tokens == n_tokens
    assert "".join(e.token for e in entries) == greedy
    assert b"".join(bytes(e.bytes or []) for e in entries).decode() == greedy
    for e in entries:
        assert e.logprob <= 0
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == top
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert all(t <= 0 for t in tops)
        assert e.top_logprobs[0].token == e.token  # greedy: the most likely token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob)
