"""Chat helpers the in-process and the real-server tests share (as tests/errors.py does for
error shapes)."""

from __future__ import annotations

from typing import Any


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
