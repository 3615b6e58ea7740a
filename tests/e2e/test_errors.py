"""Bad input gets a clear OpenAI-shaped error, never a 500 or a hang; auth and limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say hi"}]
TIMEOUT = 60


def chat_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **kw}


def completion_body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **kw}


def assert_error(
    r: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-shaped error body with all four keys; ``param``/``code`` checked if given."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, (key, err)
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def names_field(param: str | None, field: str) -> bool:
    """``param`` is the field itself or a path inside it (``logit_bias.15``, ``prompt[1]``)."""
    return param is not None and (param == field or param.startswith((f"{field}.", f"{field}[")))


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
    err = assert_error(http.post(CHAT, json=body, timeout=TIMEOUT), 400)
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
    err = assert_error(http.post(path, json=body, timeout=TIMEOUT), 400, param="n")
    assert "8" in err["message"]
    # n at the limit is fine.
    ok = chat_body(n=8, max_tokens=1) if path == CHAT else completion_body(n=8, max_tokens=1)
    r = http.post(path, json=ok, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 8


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_logit_bias_outside_vocab(http: httpx.Client, path: str) -> None:
    body = chat_body if path == CHAT else completion_body
    r = http.post(path, json=body(logit_bias={"10000000": 5}), timeout=TIMEOUT)
    assert_error(r, 400, param="logit_bias")
    r = http.post(path, json=body(logit_bias={"-1": 5}), timeout=TIMEOUT)
    assert_error(r, 400, param="logit_bias")


@pytest.mark.parametrize("prompt", [[10_000_000], [15, -3], [[15, 16], [10_000_000]]])
def test_token_prompt_outside_vocab(http: httpx.Client, prompt: Any) -> None:
    r = http.post(COMPLETIONS, json=completion_body(prompt=prompt), timeout=TIMEOUT)
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
    err = assert_error(http.post(path, json=body, timeout=TIMEOUT), 400, param=param)
    assert err["type"] == "invalid_request_error"


def test_invalid_constraint_via_extra_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, extra_body={"guided_regex": "(a"}
        )  # type: ignore[arg-type]
    assert e.value.param == "guided_regex"


def test_response_format_text_is_accepted(http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat_body(response_format={"type": "text"}), timeout=TIMEOUT)
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
    r = http.post(path, json=body, timeout=TIMEOUT)
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
def test_missing_key_is_401(server: Server, method: str, path: str, body: Any) -> None:
    r = httpx.request(method, server.root + path, json=body, timeout=TIMEOUT)
    err = assert_error(r, 401)
    assert err["type"] == "authentication_error"
    r = httpx.request(
        method,
        server.root + path,
        json=body,
        headers={"Authorization": "Bearer wrong-key"},
        timeout=TIMEOUT,
    )
    err = assert_error(r, 401)
    assert err["type"] == "authentication_error"


def test_wrong_key_through_official_client(server: Server) -> None:
    bad = openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_empty_bearer_is_401(server: Server) -> None:
    r = httpx.get(server.root + "/v1/models", headers={"Authorization": "Bearer"})
    assert_error(r, 401)


def test_bare_key_without_bearer_is_accepted(server: Server) -> None:
    r = httpx.post(
        server.root + COMPLETIONS,
        json=completion_body(max_tokens=2),
        headers={"Authorization": API_KEY},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    r = httpx.get(server.root + "/v1/models", headers={"Authorization": f"bearer {API_KEY}"})
    assert r.status_code == 200, r.text


def test_health_needs_no_key(server: Server) -> None:
    for probe in ("/health", "/ready"):
        r = httpx.get(server.root + probe, timeout=TIMEOUT)
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "phase": "ready"}


# -- unknown things -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_unknown_model_is_404(http: httpx.Client, path: str) -> None:
    body = chat_body(model="gpt-9-ultra") if path == CHAT else completion_body(model="gpt-9-ultra")
    err = assert_error(http.post(path, json=body, timeout=TIMEOUT), 404, code="model_not_found")
    assert "gpt-9-ultra" in err["message"]
    assert err["param"] == "model"


def test_unknown_model_through_official_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9-ultra", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-9-ultra")
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/chat/completions", "/", "/v1/engines"])
def test_unknown_route_is_404(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404)
    assert_error(http.post(path, json={}), 404)


def test_wrong_method_is_openai_shaped(http: httpx.Client) -> None:
    r = http.get(CHAT)
    assert r.status_code in (404, 405)
    assert_error(r, r.status_code)


# -- own servers: context length, body size, open server, env keys --------------------------


@pytest.fixture(scope="module")
def small_server() -> Iterator[Server]:
    """No API key configured (open), a 256-cell context, a 2 KiB body limit."""
    s = start_server(
        "--ctx-size", "256", "--max-body-bytes", "2048", env={"TOKENMILL_API_KEYS": ""}
    )
    yield s
    stop_server(s)


def test_open_server_needs_no_key(small_server: Server) -> None:
    r = httpx.post(
        small_server.root + COMPLETIONS, json=completion_body(max_tokens=2), timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    r = httpx.get(small_server.root + "/v1/models", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200
    assert MODEL in [m["id"] for m in r.json()["data"]]


def test_prompt_longer_than_context(small_server: Server) -> None:
    # Token ids keep the body small (under the 2 KiB limit) while exceeding 256 tokens.
    r = httpx.post(
        small_server.root + COMPLETIONS, json=completion_body(prompt=[15] * 300), timeout=TIMEOUT
    )
    err = assert_error(r, 400, code="context_length_exceeded")
    assert err["param"] == "prompt"
    assert "256" in err["message"]
    r = httpx.post(
        small_server.root + CHAT,
        json=chat_body(messages=[{"role": "user", "content": "hi " * 300}]),
        timeout=TIMEOUT,
    )
    err = assert_error(r, 400, code="context_length_exceeded")
    assert err["param"] == "messages"


def test_prompt_plus_max_tokens_over_context(small_server: Server) -> None:
    r = httpx.post(
        small_server.root + COMPLETIONS,
        json=completion_body(prompt=[15] * 200, max_tokens=100),
        timeout=TIMEOUT,
    )
    assert_error(r, 400, code="context_length_exceeded")
    r = httpx.post(small_server.root + CHAT, json=chat_body(max_tokens=300), timeout=TIMEOUT)
    assert_error(r, 400, code="context_length_exceeded")
    # Within the context it is served.
    r = httpx.post(
        small_server.root + COMPLETIONS,
        json=completion_body(prompt=[15] * 200, max_tokens=3),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 200


def test_body_over_limit_is_413(small_server: Server) -> None:
    big = completion_body(prompt="x" * 3000)
    r = httpx.post(small_server.root + COMPLETIONS, json=big, timeout=TIMEOUT)
    err = assert_error(r, 413)
    assert "2048" in err["message"]

    # Without a Content-Length (chunked upload) the limit holds too.
    payload = httpx.Request("POST", "/", json=big).content

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 512):
            yield payload[i : i + 512]

    r = httpx.post(
        small_server.root + COMPLETIONS,
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert_error(r, 413)
    # A body under the limit is served afterwards.
    r = httpx.post(
        small_server.root + COMPLETIONS, json=completion_body(max_tokens=2), timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text


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
