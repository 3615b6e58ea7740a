"""Bad input gets a clear OpenAI-shaped error, never a 500 or a hang; auth and limits. In-process
on the fake runner (tests/harness.py): none of this needs the real model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from tests.errors import assert_error, names_field
from tests.harness import ADMIN_KEY, BASE_URL, MODEL, AppStack
from tokenmill.runner.fake import FakeRunner

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say hi"}]


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **kw}


def completion_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **kw}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppStack]:
    s = AppStack(tmp_path_factory.mktemp("errors"), max_num_seqs=8)
    s.open()
    yield s
    s.close()


@pytest.fixture(scope="module")
def http(stack: AppStack) -> TestClient:
    return stack.sync_client()


@pytest.fixture(scope="module")
def raw(stack: AppStack) -> TestClient:
    """No key sent."""
    return stack.sync_client(headers={})


def official_client(http_client: httpx.Client, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{BASE_URL}/v1", api_key=key, max_retries=0, http_client=http_client
    )


@pytest.fixture(scope="module")
def client(raw: TestClient) -> openai.OpenAI:
    return official_client(raw, ADMIN_KEY)


# -- malformed bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_invalid_json(http: httpx.Client, path: str) -> None:
    r = http.post(path, content=b'{"model": "x", bad', headers={"Content-Type": "application/json"})
    err = assert_error(r, 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_body_not_an_object(http: httpx.Client, body: bytes) -> None:
    r = http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_empty_body(http: httpx.Client) -> None:
    assert_error(http.post(COMPLETIONS, content=b""), 400)


def test_invalid_utf8_body(http: httpx.Client) -> None:
    r = http.post(
        CHAT, content=b'{"model": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": MESSAGES}, "model"),
        (CHAT, {"model": MODEL}, "messages"),
        (COMPLETIONS, {"prompt": "Hello"}, "model"),
        (COMPLETIONS, {"model": MODEL}, "prompt"),
    ],
)
def test_missing_required(http: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    err = assert_error(http.post(path, json=body), 400, param=param)
    assert param in err["message"]


# -- out of range / wrong types -------------------------------------------------------------

CHAT_BAD = [
    ("temperature", 3),
    ("temperature", -0.5),
    ("temperature", "hot"),
    ("top_p", 0),
    ("top_p", 1.5),
    ("n", 0),
    ("n", 1.5),
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("max_tokens", "many"),
    ("max_completion_tokens", 0),
    ("presence_penalty", 3),
    ("frequency_penalty", -3),
    ("logit_bias", {"15": 200}),
    ("logit_bias", {"abc": 1}),
    ("logit_bias", {"15": "up"}),
    ("logit_bias", [1, 2]),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", 5),
    ("seed", "abc"),
    ("messages", []),
    ("messages", "hello"),
    ("top_logprobs", 50),
    ("stream", "maybe"),
]


@pytest.mark.parametrize(("field", "value"), CHAT_BAD, ids=lambda v: repr(v)[:20])
def test_chat_bad_value(http: httpx.Client, field: str, value: Any) -> None:
    body = chat_body(**{field: value})
    if field == "top_logprobs":
        body["logprobs"] = True
    err = assert_error(http.post(CHAT, json=body), 400)
    assert names_field(err["param"], field), err
    assert err["type"] == "invalid_request_error"


COMPLETION_BAD = [
    ("temperature", 3),
    ("top_p", 0),
    ("top_p", 1.5),
    ("n", 0),
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("presence_penalty", 3),
    ("logit_bias", {"15": 200}),
    ("logit_bias", {"1.5": 1}),
    ("logprobs", 50),
    ("logprobs", -1),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("prompt", []),
    ("prompt", [[]]),
    ("prompt", 5),
    ("prompt", [1, "a"]),
    ("prompt_logprobs", 50),
    ("echo", "sure"),
]


@pytest.mark.parametrize(("field", "value"), COMPLETION_BAD, ids=lambda v: repr(v)[:20])
def test_completion_bad_value(http: httpx.Client, field: str, value: Any) -> None:
    err = assert_error(http.post(COMPLETIONS, json=completion_body(**{field: value})), 400)
    assert names_field(err["param"], field), err


def test_nested_param_is_named(http: httpx.Client) -> None:
    body = chat_body(messages=[{"role": "wizard", "content": "hi"}])
    err = assert_error(http.post(CHAT, json=body), 400)
    assert err["param"] is not None and err["param"].startswith("messages")
    assert "role" in err["param"]


def test_top_logprobs_without_logprobs(http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json=chat_body(top_logprobs=2)), 400, param="top_logprobs")
    assert_error(
        http.post(CHAT, json=chat_body(top_logprobs=2, logprobs=False)), 400, param="top_logprobs"
    )


def test_bad_values_through_official_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)  # type: ignore[arg-type]
    assert e.value.status_code == 400
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hello", logprobs=50, max_tokens=2)
    assert e.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert e.value.param == "messages"


# -- server limits --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_n_above_max_num_seqs(http: httpx.Client, path: str) -> None:
    body = chat_body(n=9) if path == CHAT else completion_body(n=9)
    err = assert_error(http.post(path, json=body), 400, param="n")
    assert "8" in err["message"]
    # n at the limit is fine.
    ok = chat_body(n=8, max_tokens=1) if path == CHAT else completion_body(n=8, max_tokens=1)
    r = http.post(path, json=ok)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 8


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_logit_bias_outside_vocab(http: httpx.Client, path: str) -> None:
    body = chat_body if path == CHAT else completion_body
    r = http.post(path, json=body(logit_bias={"10000000": 5}))
    assert_error(r, 400, param="logit_bias")
    r = http.post(path, json=body(logit_bias={"-1": 5}))
    assert_error(r, 400, param="logit_bias")


@pytest.mark.parametrize("prompt", [[10_000_000], [15, -3], [[15, 16], [10_000_000]]])
def test_token_prompt_outside_vocab(http: httpx.Client, prompt: Any) -> None:
    r = http.post(COMPLETIONS, json=completion_body(prompt=prompt))
    assert_error(r, 400, param="prompt")


# -- not implemented: refused, not ignored; invalid structured output: refused by name ----


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (CHAT, {"guided_regex": "(a"}, "guided_regex"),
        (CHAT, {"guided_json": {"type": "nope"}}, "guided_json"),
        (CHAT, {"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (COMPLETIONS, {"guided_choice": []}, "guided_choice"),
        (COMPLETIONS, {"suffix": "end"}, "suffix"),
    ],
)
def test_refused_by_name(http: httpx.Client, path: str, extra: dict[str, Any], param: str) -> None:
    body = chat_body(**extra) if path == CHAT else completion_body(**extra)
    err = assert_error(http.post(path, json=body), 400, param=param)
    assert err["type"] == "invalid_request_error"


def test_invalid_constraint_via_extra_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, extra_body={"guided_regex": "(a"}
        )  # type: ignore[arg-type]
    assert e.value.param == "guided_regex"


def test_response_format_text_is_accepted(http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat_body(response_format={"type": "text"}))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


# -- streaming requests with bad params fail before the stream ------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "status", "param"),
    [
        (CHAT, {"temperature": 3}, 400, "temperature"),
        (CHAT, {"n": 9}, 400, "n"),
        (CHAT, {"logit_bias": {"10000000": 1}}, 400, "logit_bias"),
        (CHAT, {"model": "no-such-model"}, 404, "model"),
        (COMPLETIONS, {"logprobs": 50}, 400, "logprobs"),
        (COMPLETIONS, {"prompt": [10_000_000]}, 400, "prompt"),
    ],
)
def test_stream_with_bad_param_is_plain_error(
    http: httpx.Client, path: str, extra: dict[str, Any], status: int, param: str
) -> None:
    body = (
        chat_body(stream=True, **extra) if path == CHAT else completion_body(stream=True, **extra)
    )
    r = http.post(path, json=body)
    assert "text/event-stream" not in r.headers.get("content-type", "")
    assert_error(r, status, param=param)


def test_stream_bad_param_through_official_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            top_p=0,
        )
    assert e.value.param == "top_p"


# -- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, chat_body()),
        ("POST", COMPLETIONS, completion_body()),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
    ],
)
def test_missing_key_is_401(raw: TestClient, method: str, path: str, body: Any) -> None:
    r = raw.request(method, path, json=body)
    err = assert_error(r, 401)
    assert err["type"] == "authentication_error"
    r = raw.request(
        method,
        path,
        json=body,
        headers={"Authorization": "Bearer wrong-key"},
    )
    err = assert_error(r, 401)
    assert err["type"] == "authentication_error"


def test_wrong_key_through_official_client(raw: TestClient) -> None:
    bad = official_client(raw, "nope")
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_empty_bearer_is_401(raw: TestClient) -> None:
    r = raw.get("/v1/models", headers={"Authorization": "Bearer"})
    assert_error(r, 401)


def test_bare_key_without_bearer_is_accepted(raw: TestClient) -> None:
    r = raw.post(
        COMPLETIONS,
        json=completion_body(max_tokens=2),
        headers={"Authorization": ADMIN_KEY},
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    r = raw.get("/v1/models", headers={"Authorization": f"bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text


def test_health_needs_no_key(raw: TestClient) -> None:
    for probe in ("/health", "/ready"):
        r = raw.get(probe)
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "phase": "ready"}


# -- unknown things -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_unknown_model_is_404(http: httpx.Client, path: str) -> None:
    body = chat_body(model="gpt-9-ultra") if path == CHAT else completion_body(model="gpt-9-ultra")
    err = assert_error(http.post(path, json=body), 404, code="model_not_found")
    assert "gpt-9-ultra" in err["message"]
    assert err["param"] == "model"


def test_unknown_model_through_official_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9-ultra", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-9-ultra")
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/chat/completions", "/index.html", "/v1/engines"])
def test_unknown_route_is_404(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404)
    assert_error(http.post(path, json={}), 404)


def test_wrong_method_is_openai_shaped(http: httpx.Client) -> None:
    r = http.get(CHAT)
    assert r.status_code in (404, 405)
    assert_error(r, r.status_code)


# -- a small open server: context length, body size ----------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """No API key configured (open), a 256-token context, a 2 KiB body limit."""
    stack = AppStack(
        tmp_path_factory.mktemp("small"),
        runner=FakeRunner(n_ctx=256),
        max_body_bytes=2048,
        api_keys=(),
    )
    stack.open()
    yield stack.sync_client(headers={})
    stack.close()


def test_open_server_needs_no_key(small: TestClient) -> None:
    r = small.post(COMPLETIONS, json=completion_body(max_tokens=2))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    r = small.get("/v1/models", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200
    assert MODEL in [m["id"] for m in r.json()["data"]]


def test_prompt_longer_than_context(small: TestClient) -> None:
    # Token ids keep the body small (under the 2 KiB limit) while exceeding 256 tokens.
    r = small.post(COMPLETIONS, json=completion_body(prompt=[15] * 300))
    err = assert_error(r, 400, code="context_length_exceeded")
    assert err["param"] == "prompt"
    assert "256" in err["message"]
    r = small.post(
        CHAT,
        json=chat_body(messages=[{"role": "user", "content": "hi " * 300}]),
    )
    err = assert_error(r, 400, code="context_length_exceeded")
    assert err["param"] == "messages"


def test_prompt_plus_max_tokens_over_context(small: TestClient) -> None:
    r = small.post(
        COMPLETIONS,
        json=completion_body(prompt=[15] * 200, max_tokens=100),
    )
    assert_error(r, 400, code="context_length_exceeded")
    r = small.post(CHAT, json=chat_body(max_tokens=300))
    assert_error(r, 400, code="context_length_exceeded")
    # Within the context it is served.
    r = small.post(
        COMPLETIONS,
        json=completion_body(prompt=[15] * 200, max_tokens=3),
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 200


def test_body_over_limit_is_413(small: TestClient) -> None:
    big = completion_body(prompt="x" * 3000)
    r = small.post(COMPLETIONS, json=big)
    err = assert_error(r, 413)
    assert "2048" in err["message"]

    # Without a Content-Length (chunked upload) the limit holds too.
    payload = httpx.Request("POST", "/", json=big).content

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 512):
            yield payload[i : i + 512]

    r = small.post(
        COMPLETIONS,
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 413)
    # A body under the limit is served afterwards.
    r = small.post(COMPLETIONS, json=completion_body(max_tokens=2))
    assert r.status_code == 200, r.text
