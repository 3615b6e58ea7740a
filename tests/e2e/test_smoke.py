"""The basics through the official client: chat, completions, models, health."""

from __future__ import annotations

import httpx
import openai

from tests.e2e.conftest import ALIAS, MODEL, Server


def test_chat_completion_shape(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None
    # The chat template's fixed prefix may come from the prefix cache (test_prefix_cache).
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 0 <= cached < r.usage.prompt_tokens


def test_alias_is_echoed(client: openai.OpenAI) -> None:
    r = client.completions.create(model=ALIAS, prompt="Hello", max_tokens=3)
    assert r.model == ALIAS and r.id.startswith("cmpl-")


def test_models_and_health(client: openai.OpenAI, server: Server) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and ALIAS in ids
    assert client.models.retrieve(ALIAS).id == ALIAS
    assert httpx.get(f"{server.root}/health").json() == {"status": "ok", "phase": "ready"}
    assert httpx.get(f"{server.root}/ready").json() == {"status": "ok", "phase": "ready"}
