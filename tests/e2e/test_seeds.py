"""The examples of the specification pages (/work/shared/seeds), adapted only in base URL,
API key and model, plus the obvious doc-bug fixes the seeds' README allows."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ALIAS, API_KEY, Server

# --- seed 000: chat with every field --------------------------------------------------------

SEED0_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a chemistry expert. Add jokes about cats to your responses from time "
        "to time.",
    },
    {"role": "user", "content": "Hello!"},
    {
        "role": "assistant",
        "content": "Hello! How can I assist you with chemistry today? And did you hear about the "
        "cat who became a chemist? She had nine lives, but she only needed one formula!",
    },
]
# The seed's ``{"properties": {...}}`` placeholder, filled in.
GUIDED_JSON = {"type": "object", "properties": {"answer": {"type": "string"}}}

# The cURL body with its two doc bugs fixed (the ``{...}`` placeholder, the missing comma).
SEED0_CURL_BODY: dict[str, Any] = {
    "model": ALIAS,
    "messages": SEED0_MESSAGES,
    "max_tokens": 100,
    "temperature": 1,
    "top_p": 1,
    "top_k": 50,
    "n": 1,
    "stream": False,
    "stream_options": None,
    "stop": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": None,
    "logprobs": False,
    "top_logprobs": None,
    "user": None,
    "guided_json": GUIDED_JSON,
    "response_format": {"type": "json_object"},
}

# The JS body: the same fields, but guided_json inside a literal ``extra_body`` object.
SEED0_JS_BODY: dict[str, Any] = {
    "max_tokens": 100,
    "temperature": 1,
    "top_p": 1,
    "top_k": 50,
    "n": 1,
    "stream": False,
    "stream_options": None,
    "stop": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": None,
    "logprobs": False,
    "top_logprobs": None,
    "user": None,
    "extra_body": {"guided_json": GUIDED_JSON},
    "response_format": {"type": "json_object"},
    "model": ALIAS,
    "messages": SEED0_MESSAGES,
}


def seed0_python(client: openai.OpenAI, structured: bool) -> Any:
    """The seed's Python call; ``top_k`` is not an argument of the client, so it rides in
    ``extra_body`` like ``guided_json``."""
    extra_body: dict[str, Any] = {"top_k": 50}
    kw: dict[str, Any] = {}
    if structured:
        extra_body["guided_json"] = GUIDED_JSON
        kw["response_format"] = {"type": "json_object"}
    return client.chat.completions.create(
        model=ALIAS,
        messages=SEED0_MESSAGES,  # type: ignore[arg-type]
        max_tokens=100,
        temperature=1,
        top_p=1,
        n=1,
        stream=False,
        stream_options=None,
        stop=None,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias=None,
        logprobs=False,
        top_logprobs=None,
        user=None,
        extra_body=extra_body,
        **kw,
    )


def assert_structured(body: dict[str, Any]) -> None:
    """The seed's guided_json + json_object: the answer is a JSON object of that schema."""
    content = body["choices"][0]["message"]["content"]
    if body["choices"][0]["finish_reason"] == "stop":
        value = json.loads(content)
        assert isinstance(value, dict)
        assert isinstance(value.get("answer", ""), str)
    else:  # cut by max_tokens: still a prefix of an object
        assert content.startswith("{")


def assert_seed0_response(body: dict[str, Any], max_tokens: int = 100) -> None:
    """The fields of the seed's sample response."""
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == ALIAS
    assert isinstance(body["created"], int)
    assert "system_fingerprint" in body
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length")
    assert "stop_reason" in choice and choice["stop_reason"] is None
    assert choice["logprobs"] is None
    msg = choice["message"]
    assert msg["role"] == "assistant"
    assert isinstance(msg["content"], str) and msg["content"]
    assert msg["tool_calls"] == []
    assert "function_call" in msg and msg["function_call"] is None
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= max_tokens
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens
    assert usage["prompt_tokens"] > 60  # the three messages, rendered
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_seed000_python_structured_output(client: openai.OpenAI) -> None:
    r = seed0_python(client, structured=True)
    assert_seed0_response(r.model_dump())
    assert_structured(r.model_dump())


def test_seed000_python_without_structured_output(client: openai.OpenAI) -> None:
    r = seed0_python(client, structured=False)
    assert_seed0_response(r.model_dump())
    assert r.choices[0].message.tool_calls == []


def test_seed000_curl_body(server: Server) -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "*/*",
        "Authorization": f"Bearer {API_KEY}",
    }
    url = f"{server.base_url}/chat/completions"
    resp = httpx.post(url, content=json.dumps(SEED0_CURL_BODY), headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    assert_seed0_response(resp.json())
    assert_structured(resp.json())
    # Without the two structured-output fields the same body succeeds too.
    body = {k: v for k, v in SEED0_CURL_BODY.items() if k not in ("guided_json", "response_format")}
    body["max_tokens"] = 30
    resp = httpx.post(url, content=json.dumps(body), headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    assert_seed0_response(resp.json(), max_tokens=30)


def test_seed000_js_body_literal_extra_body(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json=SEED0_JS_BODY)
    assert resp.status_code == 200, resp.text
    assert_structured(resp.json())
    # guided_json only inside the literal extra_body, as a regex that cannot hold: refused
    # by name, so extra_body was read.
    body = copy.deepcopy(SEED0_JS_BODY)
    del body["response_format"]
    body["extra_body"] = {"guided_regex": "(unclosed"}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "guided_regex"
    body["extra_body"] = {}
    body["max_tokens"] = 30  # shorter, for speed
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert_seed0_response(resp.json(), max_tokens=30)


# --- seed 001: streamed code autocomplete ---------------------------------------------------


@pytest.fixture(scope="module")
def say_my_name(client: openai.OpenAI) -> Any:
    """The same request, not streamed, as the reference for both streamed variants."""
    return client.completions.create(model=ALIAS, prompt="Say my name", max_tokens=7, temperature=0)


def test_seed001_python_stream(client: openai.OpenAI, say_my_name: Any) -> None:
    chunks = list(
        client.completions.create(
            model=ALIAS, prompt="Say my name", max_tokens=7, temperature=0, stream=True
        )
    )
    assert chunks
    for ch in chunks:
        assert ch.object == "text_completion"
        assert ch.id.startswith("cmpl-")
        assert ch.model == ALIAS
        assert ch.system_fingerprint and ch.system_fingerprint.startswith("fp_")
    assert len({ch.id for ch in chunks}) == 1
    with_choices = [ch for ch in chunks if ch.choices]
    text = "".join(ch.choices[0].text for ch in with_choices)
    reasons = [ch.choices[0].finish_reason for ch in with_choices]
    ref = say_my_name.choices[0]
    assert reasons[-1] == ref.finish_reason
    assert reasons[-1] in ("stop", "length")
    assert all(r is None for r in reasons[:-1])
    assert text == ref.text
    if ref.finish_reason == "length":
        assert say_my_name.usage.completion_tokens == 7


def test_seed001_curl_bare_authorization(server: Server, say_my_name: Any) -> None:
    url = f"{server.base_url}/completions"
    body = json.dumps(
        {
            "model": ALIAS,
            "prompt": "Say my name",
            "max_tokens": 7,
            "temperature": 0,
            "stream": True,
        }
    )
    headers = {"Content-Type": "application/json", "Authorization": API_KEY}
    with httpx.stream("POST", url, content=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        raw = r.read().decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "text_completion" for o in objs)
    text = "".join(o["choices"][0]["text"] for o in objs if o["choices"])
    assert text == say_my_name.choices[0].text
    # The bare form really checks the key.
    bad = httpx.post(
        url, content=body, headers={**headers, "Authorization": "tm-wrong"}, timeout=120
    )
    assert bad.status_code == 401


# --- seed 002: /v1/completions reference ----------------------------------------------------

SEED2_BODY: dict[str, Any] = {
    "model": ALIAS,
    "prompt": "Say this is a test",
    "stream": False,
    "stream_options": None,
    "max_tokens": 100,
    "temperature": 1,
    "top_p": 1,
    "n": 1,
    "logprobs": None,
    "echo": False,
    "stop": "<string>",
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "user": "<string>",
    "extra_body": None,
    "service_tier": "auto",
}


def test_seed002_completions_body(http: httpx.Client) -> None:
    resp = http.post("/v1/completions", params={"ai_project_id": "proj-1"}, json=SEED2_BODY)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == ALIAS
    assert isinstance(body["created"], int)
    assert body["service_tier"] == "default"  # auto resolves to the tier actually used
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert isinstance(choice["text"], str)
    assert "<string>" not in choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 100
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 100
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # A tier other than auto is echoed back.
    flex = http.post(
        "/v1/completions",
        params={"ai_project_id": "proj-1"},
        json={**SEED2_BODY, "service_tier": "flex", "max_tokens": 1},
    )
    assert flex.status_code == 200, flex.text
    assert flex.json()["service_tier"] == "flex"


# --- seed 003: a second provider's chat response fields -------------------------------------

SEED3_BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Is Montreal a thriving hub for the AI industry?"}],
    "model": ALIAS,
    "max_tokens": 20,
    "temperature": 0,
    "top_p": 1,
    "stream": False,
}


def test_seed003_response_fields(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={**SEED3_BODY, "prompt_logprobs": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int) and body["model"] == ALIAS
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"]
    assert isinstance(body["service_tier"], str) and body["service_tier"] == "default"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
    msg = choice["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str) and msg["content"]
    assert msg["tool_calls"] == []
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 20
    assert "prompt_tokens_details" in usage and "completion_tokens_details" in usage
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0
    plp = body["prompt_logprobs"]
    assert isinstance(plp, list) and len(plp) == usage["prompt_tokens"] and plp[0] is None
    assert all(isinstance(p, dict) and p for p in plp[1:])


def test_seed003_stream_of_chunks(http: httpx.Client) -> None:
    ref = http.post("/v1/chat/completions", json=SEED3_BODY).json()
    with http.stream("POST", "/v1/chat/completions", json={**SEED3_BODY, "stream": True}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    for c in chunks:
        assert c["model"] == ALIAS and c["system_fingerprint"] and isinstance(c["created"], int)
        assert c["service_tier"] == "default"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ref["choices"][0]["message"]["content"]
    last = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == ref["choices"][0]["finish_reason"]
