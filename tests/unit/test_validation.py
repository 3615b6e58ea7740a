"""Validation at the edge, in-process on the fake runner: exact types, malformed Unicode,
pathological nesting and empty prompts are 400s naming the field (or the body), never 500s;
the OpenAPI description is served without a key and describes the real request bodies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.harness import AppStack
from tokenmill.api.jsonbody import MAX_DEPTH
from tokenmill.runner.fake import FakeRunner

KEY = {"Authorization": "Bearer admin"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BOS = 0  # the fake vocabulary's id 0 renders as nothing; with_bos names it "<s>"


async def serve(tmp: Path, runner: FakeRunner) -> AsyncIterator[httpx.AsyncClient]:
    async for c in AppStack(tmp, runner=runner).client(headers={}):
        yield c


def with_bos() -> FakeRunner:
    runner = FakeRunner()
    runner.info = dataclasses.replace(runner.info, bos_id=BOS, special_texts={BOS: "<s>"})
    return runner


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(tmp_path, FakeRunner()):
        yield c


@pytest.fixture
async def http_bos(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(tmp_path, with_bos()):
        yield c


def chat(**kw: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": "fake", "prompt": "hello", "max_tokens": 2, **kw}


async def post_raw(c: httpx.AsyncClient, path: str, raw: bytes) -> httpx.Response:
    return await c.post(path, content=raw, headers={**KEY, "Content-Type": "application/json"})


def error_of(r: httpx.Response, param: str | None) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    return dict(err)


# -- exact types: each of these was coerced before -----------------------------------------

COERCED = [
    (CHAT, "stream", "yes", "stream"),
    (CHAT, "stream", 1, "stream"),
    (COMPLETIONS, "stream", "true", "stream"),
    (CHAT, "logprobs", "true", "logprobs"),
    (COMPLETIONS, "echo", "yes", "echo"),
    (CHAT, "add_generation_prompt", 0, "add_generation_prompt"),
    (CHAT, "n", 1.0, "n"),
    (CHAT, "n", True, "n"),
    (CHAT, "n", "1", "n"),
    (CHAT, "max_tokens", "2", "max_tokens"),
    (CHAT, "max_tokens", 2.0, "max_tokens"),
    (CHAT, "max_completion_tokens", True, "max_completion_tokens"),
    (COMPLETIONS, "max_tokens", "2", "max_tokens"),
    (COMPLETIONS, "logprobs", 1.0, "logprobs"),
    (COMPLETIONS, "logprobs", True, "logprobs"),
    (CHAT, "seed", "7", "seed"),
    (CHAT, "seed", 7.0, "seed"),
    (CHAT, "top_k", True, "top_k"),
    (CHAT, "temperature", "1", "temperature"),
    (CHAT, "temperature", True, "temperature"),
    (COMPLETIONS, "top_p", "0.5", "top_p"),
    (CHAT, "logit_bias", {"5": "1"}, "logit_bias.5"),
    (CHAT, "logit_bias", {"5": True}, "logit_bias.5"),
    (CHAT, "stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
    (CHAT, "user", 5, "user"),
    (CHAT, "model", 5, "model"),
    (COMPLETIONS, "prompt", [1.0, 2.0], "prompt[0]"),
    (COMPLETIONS, "prompt", [True], "prompt[0]"),
    (COMPLETIONS, "prompt", 5, "prompt"),
    (COMPLETIONS, "stop", ["a", 5], "stop[1]"),
]


@pytest.mark.parametrize(("path", "field", "value", "param"), COERCED)
async def test_types_are_exact(
    http: httpx.AsyncClient, path: str, field: str, value: Any, param: str
) -> None:
    body = chat(**{field: value}) if path == CHAT else completion(**{field: value})
    err = error_of(await http.post(path, json=body, headers=KEY), param)
    assert param in err["message"]


async def test_message_fields_are_named(http: httpx.AsyncClient) -> None:
    content = [{"type": "text", "text": 5}]
    r = await http.post(
        CHAT, json=chat(messages=[{"role": "user", "content": content}]), headers=KEY
    )
    error_of(r, "messages[0].content[0].text")
    r = await http.post(CHAT, json=chat(messages=[{"role": "user", "content": 5}]), headers=KEY)
    err = error_of(r, "messages[0].content")
    assert "a valid string or a valid list" in err["message"]  # both members of the union
    r = await http.post(CHAT, json=chat(messages=[{"role": "user", "name": 1}]), headers=KEY)
    error_of(r, "messages[0].name")
    for bad, param in (
        (5, "messages[0]"),
        ({"role": "user", "content": [7]}, "messages[0].content[0]"),
    ):
        r = await http.post(CHAT, json=chat(messages=[bad]), headers=KEY)
        err = error_of(r, param)
        assert "a valid object" in err["message"] and "instance of" not in err["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat(temperature=1, top_p=1, presence_penalty=0, logit_bias={"5": 2})),
        (COMPLETIONS, completion(temperature=0, frequency_penalty=1, min_p=0)),
        (COMPLETIONS, completion(prompt=[5, 6, 7], stop=["x"])),
        (COMPLETIONS, completion(prompt=[[5, 6], [7]], stop="x")),
        (CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])),
    ],
)
async def test_exact_types_still_pass(
    http: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    """JSON integers are numbers; every member of a union still validates."""
    r = await http.post(path, json=body, headers=KEY)
    assert r.status_code == 200, r.text


# -- malformed Unicode, pathological nesting, numbers JSON does not have ---------------------


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        (COMPLETIONS, b'{"model": "fake", "prompt": "a\\ud800b"}', "prompt"),
        (COMPLETIONS, b'{"model": "fake", "prompt": ["ok", "\\udfff"]}', "prompt[1]"),
        (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "messages[0].content"),
        (CHAT, b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}], '
               b'"extra_body": {"guided_regex": "\\udc00"}}', "extra_body.guided_regex"),
        (CHAT, b'{"model": "fake", "messages": [], "\\ud800": 1}', None),
    ],
)  # fmt: skip
async def test_lone_surrogate_is_400(
    http: httpx.AsyncClient, path: str, raw: bytes, param: str | None
) -> None:
    err = error_of(await post_raw(http, path, raw), param)
    assert "surrogate" in err["message"]


async def test_surrogate_pair_is_fine(http: httpx.AsyncClient) -> None:
    r = await post_raw(http, COMPLETIONS, b'{"model": "fake", "prompt": "\\ud83d\\ude00"}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"model": "fake", "prompt": "x", "guided_json": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    ],
)
async def test_deep_nesting_is_400_for_the_body(http: httpx.AsyncClient, raw: bytes) -> None:
    """Too deep for json.loads: only the body can be named."""
    err = error_of(await post_raw(http, COMPLETIONS, raw), None)
    assert f"nested more than {MAX_DEPTH} levels" in err["message"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "fake", "prompt": "x", "tools": ' + b"[" * 150 + b"]" * 150 + b"}", "tools"),
        (b'{"model": "fake", "prompt": "x", "extra_body": {"guided_json": '
         + b'{"a": ' * 120 + b"1" + b"}" * 120 + b"}}", "extra_body"),
        (b'{"a.b": ' + b"[" * 101 + b"]" * 101 + b', "model": "fake", "prompt": "x"}', "a.b"),
    ],
)  # fmt: skip
async def test_deep_field_is_400_naming_it(http: httpx.AsyncClient, raw: bytes, param: str) -> None:
    err = error_of(await post_raw(http, COMPLETIONS, raw), param)
    assert f"nested more than {MAX_DEPTH} levels" in err["message"]


async def test_nesting_within_the_limit_is_fine(http: httpx.AsyncClient) -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    r = await http.post(COMPLETIONS, json=completion(vendor_extra=deep), headers=KEY)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 5000])
async def test_numbers_outside_json_are_400(http: httpx.AsyncClient, value: bytes) -> None:
    raw = b'{"model": "fake", "prompt": "x", "temperature": ' + value + b"}"
    err = error_of(await post_raw(http, COMPLETIONS, raw), None)
    assert err["code"] == "invalid_json"
    assert "set_int_max_str_digits" not in err["message"]


# -- the empty prompt ------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "param"), [("", "prompt"), (["a", ""], "prompt[1]")])
async def test_empty_prompt_without_bos_is_400(
    http: httpx.AsyncClient, prompt: Any, param: str
) -> None:
    err = error_of(await http.post(COMPLETIONS, json=completion(prompt=prompt), headers=KEY), param)
    assert "empty" in err["message"]


async def test_empty_prompt_starts_from_bos(http_bos: httpx.AsyncClient) -> None:
    body = completion(prompt="", echo=True, logprobs=1, max_tokens=3, temperature=0)
    r = await http_bos.post(COMPLETIONS, json=body, headers=KEY)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["usage"]["prompt_tokens"] == 1  # the BOS token the engine read
    choice = out["choices"][0]
    assert choice["text"].startswith("<s>") and len(choice["text"]) > 3
    lp = choice["logprobs"]
    assert lp["tokens"][0] == "<s>" and lp["token_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][1] == 3
    # The same as sending the BOS token id, and as an empty item of a list.
    by_id = await http_bos.post(COMPLETIONS, json={**body, "prompt": [BOS]}, headers=KEY)
    assert by_id.json()["choices"][0]["text"] == choice["text"]
    listed = await http_bos.post(COMPLETIONS, json={**body, "prompt": ["", "a"]}, headers=KEY)
    assert listed.status_code == 200 and listed.json()["usage"]["prompt_tokens"] == 2


async def test_empty_prompt_streams(http_bos: httpx.AsyncClient) -> None:
    body = completion(prompt="", stream=True, stream_options={"include_usage": True})
    r = await http_bos.post(COMPLETIONS, json=body, headers=KEY)
    assert r.status_code == 200
    events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    assert events[-1]["usage"]["prompt_tokens"] == 1
    assert not any("error" in e for e in events)


# -- the published schema --------------------------------------------------------------------


async def test_openapi_and_docs_need_no_key(http: httpx.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    assert (await http.get("/docs")).status_code == 200
    assert (await http.get("/v1/models")).status_code == 401  # the API itself still does


@pytest.mark.parametrize(
    ("path", "good", "bad"),
    [
        (CHAT, chat(stream=False, temperature=1), chat(stream="yes")),
        (COMPLETIONS, completion(prompt=[[1, 2]], echo=True), completion(prompt=[1.5])),
    ],
)
async def test_openapi_describes_the_request_bodies(
    http: httpx.AsyncClient, path: str, good: dict[str, Any], bad: dict[str, Any]
) -> None:
    spec = (await http.get("/openapi.json")).json()
    op = spec["paths"][path]["post"]
    assert op["security"] == [{"apiKey": []}]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = {"$ref": ref, "components": spec["components"]}
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    error = op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"]
    assert error == "#/components/schemas/ErrorResponse"
    assert "422" not in json.dumps(spec["paths"])  # FastAPI's default; we answer 400


# -- values at the edge of the sampler's arithmetic (found by the fuzzer) ---------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1e-300},
        {"temperature": 1e-300, "top_p": 0.5},
        {"repetition_penalty": 5e-324},
        {"repetition_penalty": 5e-324, "temperature": 1e-300, "top_p": 0.9},
    ],
)
async def test_tiny_temperature_and_penalty_are_answered(
    http: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    # Dividing logits by these overflowed float32 to inf and nan, and sampling raised.
    for path, body in ((CHAT, chat(**fields)), (COMPLETIONS, completion(**fields))):
        r = await http.post(path, json=body, headers=KEY)
        assert r.status_code == 200, r.text
    # A temperature this small is greedy: the same answer as temperature 0.
    if set(fields) == {"temperature"}:
        greedy = await http.post(COMPLETIONS, json=completion(temperature=0), headers=KEY)
        tiny = await http.post(COMPLETIONS, json=completion(**fields), headers=KEY)
        assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
