"""Bad input gets a clear OpenAI-shaped error, never a 500 or a hang; auth and limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server
from tests.errors import assert_error

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say hi"}]
TIMEOUT = 60


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **kw}


def completion_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **kw}


@pytest.fixture(scope="module")
def env_keys_server() -> Iterator[Server]:
    s = start_server(env={"TOKENMILL_API_KEYS": "k1,k2"})
    yield s
    stop_server(s)


def test_env_api_keys(env_keys_server: Server) -> None:
    url = env_keys_server.root + "/v1/models"
    for key in ("k1", "k2"):
        r = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT)
        assert r.status_code == 200, (key, r.text)
    for key in ("k3", "k1,k2", API_KEY):
        assert_error(httpx.get(url, headers={"Authorization": f"Bearer {key}"}), 401)
    assert_error(httpx.get(url), 401)
    c = openai.OpenAI(base_url=env_keys_server.base_url, api_key="k2", max_retries=0)
    r2 = c.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
    assert r2.choices[0].text is not None and r2.usage is not None


# -- still healthy after all of the above ---------------------------------------------------


def test_engine_not_wedged_after_errors(client: openai.OpenAI, http: httpx.Client) -> None:
    # A burst of bad requests, then normal ones: they must still be answered correctly.
    for body in (chat_body(temperature=3), chat_body(n=9), chat_body(model="nope")):
        assert http.post(CHAT, json=body, timeout=TIMEOUT).status_code in (400, 404)
    a = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    b = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    assert a.choices[0].message.content
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage is not None and 0 < a.usage.completion_tokens <= 8
    c = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert c.usage is not None and c.usage.completion_tokens >= 1
