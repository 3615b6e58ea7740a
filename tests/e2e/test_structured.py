"""Structured output end to end: guided_json/regex/choice/grammar, response_format and the
official client's ``parse``/``stream`` helpers, against the real server and model.

Every check is one the feature must earn: unconstrained, this tiny model answers in prose or
fenced code (``test_unconstrained_baseline_fails_the_checks``), so its output would neither
parse as JSON nor match the regexes, choices and grammars used here. Sampled runs use
temperature 1 with a seed, so a failure can be replayed. An output cut by ``max_tokens``
(``finish_reason == "length"``) may be incomplete and is not validated, but the large
majority must finish on their own.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server
from tests.e2e.helpers import CHAT_PATH, HOT, streamed_and_not, user

COMPLETIONS = "/v1/completions"
JSON_TOKENS = 250  # enough for every schema below to finish
SHORT_TOKENS = 60
MIN_STOP_RATIO = 0.9

# The schema runs queue ~50 requests on an 8-sequence server: give the module room.
pytestmark = pytest.mark.timeout(900)
# conftest's aclient: non-streamed requests wait in the queue behind others.
CLIENT_TIMEOUT = 600


# -- validation -------------------------------------------------------------------------------

_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d)"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
FORMATS = jsonschema.FormatChecker(formats=())
for _name in ("date", "email", "ipv4", "ipv6", "uuid"):
    FORMATS.checkers[_name] = jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers[_name]


# jsonschema checks these only with optional packages this venv does not have: RFC 3339 by hand.
@FORMATS.checks("time")
def _is_time(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(_TIME, value) is not None


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    datetime.date.fromisoformat(value[:10])
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}[tT ]" + _TIME, value) is not None


@FORMATS.checks("hostname")
def _is_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return len(value) <= 253 and re.fullmatch(rf"{_LABEL}(\.{_LABEL})*", value) is not None


def validate(text: str, schema: dict[str, Any]) -> Any:
    """The JSON value of ``text``, after checking it against ``schema`` (formats included)."""
    value = json.loads(text)
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(value)
    return value


def is_valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        validate(text, schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# -- running requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One choice: its text (assembled from the stream when streamed) and finish reason."""

    case: str
    stream: bool
    index: int
    finish_reason: str | None
    text: str


async def chat_samples(
    aclient: openai.AsyncOpenAI, case: str, stream: bool, **kw: Any
) -> list[Sample]:
    """Run one chat request, streamed or not, and return its choices in index order."""
    n = int(kw.get("n") or 1)
    if not stream:
        r = await aclient.chat.completions.create(model=MODEL, **kw)
        assert len(r.choices) == n
        return [
            Sample(case, False, c.index, c.finish_reason, c.message.content or "")
            for c in sorted(r.choices, key=lambda c: c.index)
        ]
    texts: dict[int, list[str]] = {i: [] for i in range(n)}
    finish: dict[int, str] = {}
    chunks = await aclient.chat.completions.create(model=MODEL, stream=True, **kw)
    async for chunk in chunks:
        for c in chunk.choices:
            assert c.index not in finish, f"{case}: delta after the finish of choice {c.index}"
            assert not c.delta.tool_calls
            texts[c.index].append(c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert sorted(finish) == list(range(n)), f"{case}: finish reasons {finish}"
    return [Sample(case, True, i, finish[i], "".join(texts[i])) for i in range(n)]


async def both_ways(aclient: openai.AsyncOpenAI, case: str, seed: int, **kw: Any) -> list[Sample]:
    """The same request streamed and not (different seeds: twice the variety)."""

    async def run(stream: bool, **more: Any) -> list[Sample]:
        return await chat_samples(aclient, case, stream, **more)

    return await streamed_and_not(run, seed, **kw)


async def guided_samples(
    aclient: openai.AsyncOpenAI,
    field: str,
    cases: list[tuple[str, str, Any]],
    first_seed: int,
    max_tokens: int = SHORT_TOKENS,
) -> list[Sample]:
    """Each ``(case, prompt, constraint)`` under ``field`` at temperature 1 with n=3, streamed
    and not, all sent at once so the server batches them."""
    runs = [
        both_ways(
            aclient,
            case,
            first_seed + i,
            messages=user(prompt),
            n=3,
            max_tokens=max_tokens,
            extra_body={field: value},
            **HOT,
        )
        for i, (case, prompt, value) in enumerate(cases)
    ]
    return [s for group in await asyncio.gather(*runs) for s in group]


def report(label: str, samples: list[Sample]) -> float:
    stops = sum(s.finish_reason == "stop" for s in samples)
    print(f"\n{label}: {stops}/{len(samples)} finished with stop, the rest with length")
    assert all(s.finish_reason in ("stop", "length") for s in samples), samples
    return stops / len(samples)


# -- the schemas ------------------------------------------------------------------------------


def obj(props: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    """A closed object schema, every property required unless told otherwise."""
    req = list(props) if required is None else required
    return {
        "type": "object",
        "properties": props,
        "required": req,
        "additionalProperties": False,
        **kw,
    }


def string(max_length: int = 20, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **kw}


def integer(lo: int, hi: int, **kw: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi, **kw}


NODE = obj({"v": integer(0, 9), "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}})
NODE["properties"]["children"]["maxItems"] = 2

# (id, prompt, schema): nested objects, arrays, enums, anyOf/oneOf, required and optional
# fields, string formats and patterns, numbers with bounds, refs, tuples, recursion.
SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Describe a person.", obj({"name": string(30), "age": integer(0, 120)})),
    (
        "enums",
        "Pick a colour and a shade.",
        obj(
            {
                "color": {"enum": ["red", "green", "blue"]},
                "shade": {"type": "string", "enum": ["light", "dark"]},
            }
        ),
    ),
    (
        "nested_address",
        "Where does Sherlock Holmes live?",
        obj(
            {
                "name": string(),
                "address": obj(
                    {
                        "street": string(30),
                        "city": string(),
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    }
                ),
            }
        ),
    ),
    (
        "int_array",
        "List a few lucky numbers.",
        {"type": "array", "items": integer(1, 100), "minItems": 2, "maxItems": 5},
    ),
    (
        "shape_anyof",
        "Describe a geometric shape.",
        {
            "anyOf": [
                obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0.5}}),
                obj({"kind": {"const": "rect"}, "w": integer(1, 50), "h": integer(1, 50)}),
            ]
        },
    ),
    (
        "formats_date_email",
        "Give the birthday and e-mail address of a customer.",
        obj(
            {
                "birthday": {"type": "string", "format": "date"},
                "email": {"type": "string", "format": "email", "maxLength": 30},
            }
        ),
    ),
    (
        "formats_uuid_ipv4",
        "Register a device on the network.",
        obj(
            {
                "id": {"type": "string", "format": "uuid"},
                "ip": {"type": "string", "format": "ipv4"},
            }
        ),
    ),
    (
        "formats_date_time",
        "When was the meeting created, and when does the alarm ring?",
        obj(
            {
                "created": {"type": "string", "format": "date-time", "maxLength": 30},
                "alarm": {"type": "string", "format": "time", "maxLength": 20},
            }
        ),
    ),
    (
        "formats_host_ipv6",
        "Describe a web server.",
        obj(
            {
                "host": {"type": "string", "format": "hostname", "maxLength": 40},
                "ipv6": {"type": "string", "format": "ipv6"},
                "port": integer(1, 65535),
            }
        ),
    ),
    (
        "number_bounds",
        "Report today's weather measurements.",
        obj(
            {
                "temperature": {"type": "number", "minimum": -50, "maximum": 50},
                "humidity": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
                "pressure": {"type": "number", "minimum": 900, "maximum": 1100},
            }
        ),
    ),
    (
        "nullable",
        "Is the account active? Add a note and a score if you have them.",
        obj(
            {
                "active": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 20},
                "score": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
            }
        ),
    ),
    (
        "order_items",
        "Write an order for a hardware store.",
        obj(
            {
                "items": {
                    "type": "array",
                    "items": obj(
                        {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                            "qty": integer(1, 10),
                        }
                    ),
                    "minItems": 1,
                    "maxItems": 3,
                }
            }
        ),
    ),
    (
        "defs_ref",
        "Give the two end points of a line segment.",
        {
            **obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}),
            "$defs": {"point": obj({"x": integer(-99, 99), "y": integer(-99, 99)})},
        },
    ),
    (
        "const_enum",
        "What is the status of the job?",
        obj({"version": {"const": 2}, "status": {"enum": ["ok", "error", None, 1]}}),
    ),
    ("string_enum", "Which Greek letter comes first?", {"enum": ["alpha", "beta", "gamma"]}),
    ("int_range", "How many eggs are in a dozen?", integer(10, 20)),
    (
        "deep_nesting",
        "Fill in the nested value.",
        obj({"a": obj({"b": obj({"c": obj({"d": integer(0, 1000)})})})}),
    ),
    (
        "enum_array",
        "Tag this post.",
        obj({"tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "maxItems": 3}}),
    ),
    (
        "anyof_value",
        "Give me any value.",
        obj({"value": {"anyOf": [{"type": "integer"}, string(10), {"type": "boolean"}]}}),
    ),
    (
        "patterns",
        "Make up a product code and a label.",
        obj(
            {
                "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
                "label": {"type": "string", "minLength": 3, "maxLength": 8},
            }
        ),
    ),
    (
        "oneof_event",
        "Describe a user interface event.",
        {
            "oneOf": [
                obj({"type": {"const": "click"}, "x": integer(0, 999), "y": integer(0, 999)}),
                obj({"type": {"const": "key"}, "key": string(1, minLength=1)}),
            ]
        },
    ),
    (
        "tuple",
        "Give a name, an age and whether they are a student.",
        {
            "type": "array",
            "prefixItems": [string(10), integer(0, 99), {"type": "boolean"}],
            "items": False,
            "minItems": 3,
        },
    ),
    (
        "recursive_tree",
        "Draw a small tree of digits.",
        {"$ref": "#/$defs/node", "$defs": {"node": NODE}},
    ),
    (
        "optional_fields",
        "Describe a player, briefly.",
        obj(
            {"nickname": string(15), "score": {"type": "number", "minimum": 0, "maximum": 10}},
            required=[],
        ),
    ),
    (
        "multiple_of",
        "How many minutes until the bus comes?",
        obj({"minutes": integer(0, 100, multipleOf=5)}),
    ),
    (
        "map",
        "Count some fruit.",
        {"type": "object", "additionalProperties": integer(0, 9), "maxProperties": 3},
    ),
]
SCHEMA_BY_ID = {case: schema for case, _, schema in SCHEMAS}


@pytest.fixture(scope="module")
def schema_samples(server: Server) -> list[Sample]:
    """Every schema at temperature 1 with n=3, streamed and not, all sent at once so the
    server batches them."""

    async def run() -> list[Sample]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=900
        ) as c:
            cases = [(case, f"{p} Answer in JSON.", schema) for case, p, schema in SCHEMAS]
            return await guided_samples(c, "guided_json", cases, 0, JSON_TOKENS)

    started = time.monotonic()
    samples = asyncio.run(run())
    print(f"\n{len(SCHEMAS)} schemas, {len(samples)} outputs in {time.monotonic() - started:.0f} s")
    return samples


def test_at_least_twenty_schemas() -> None:
    assert len(SCHEMA_BY_ID) == len(SCHEMAS) >= 20
    for schema in SCHEMA_BY_ID.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SCHEMA_BY_ID))
def test_schema_outputs_validate(schema_samples: list[Sample], case: str) -> None:
    samples = [s for s in schema_samples if s.case == case]
    assert len(samples) == 6  # n=3, streamed and not
    assert any(s.finish_reason == "stop" for s in samples), samples  # never vacuous
    for s in samples:
        if s.finish_reason == "length":
            continue  # cut short: may be incomplete
        assert s.finish_reason == "stop", s
        try:
            validate(s.text, SCHEMA_BY_ID[case])
        except (ValueError, jsonschema.ValidationError) as e:
            pytest.fail(f"{case} (stream={s.stream}, choice {s.index}): {s.text!r}: {e}")


def test_schema_outputs_mostly_finish(schema_samples: list[Sample]) -> None:
    ratio = report(f"guided_json, {len(SCHEMAS)} schemas", schema_samples)
    for s in schema_samples:
        if s.finish_reason != "stop":
            print(f"cut by length: {s.case}: {s.text[:120]!r}...")
    assert ratio >= MIN_STOP_RATIO


def test_unconstrained_baseline_fails_the_checks(client: openai.OpenAI) -> None:
    """Without constraints the model's answers fail the checks used in this module."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=user("Describe a person. Answer in JSON."),
        max_tokens=80,
        n=3,
        seed=1,
        **HOT,
    )
    for c in r.choices:
        assert not is_valid(c.message.content or "", SCHEMA_BY_ID["person"]), c
    for regex, prompt in REGEXES[:3]:
        r = client.chat.completions.create(
            model=MODEL, messages=user(prompt), max_tokens=30, temperature=0
        )
        assert not re.fullmatch(regex, r.choices[0].message.content or ""), (regex, r)


# -- regex, choice and grammar ----------------------------------------------------------------

REGEXES: list[tuple[str, str]] = [
    (r"\(\d{3}\) \d{3}-\d{4}", "What is the phone number of the city hall?"),
    (r"[a-z]{3,10}@[a-z]{3,10}\.(com|org|net)", "Give me an e-mail address."),
    (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", "When was the Eiffel Tower finished?"),
    (r"#[0-9a-f]{6}", "What is your favourite colour?"),
    (r"(yes|no), because [a-z ]{5,40}\.", "Is the sky blue?"),
    (r"[A-Z][a-z]{1,12} (is|was) \d{1,3} years old", "How old is your grandmother?"),
    (r"(\d{1,3}\.){3}\d{1,3}", "What is the address of the DNS server?"),
]


async def test_regex_outputs_match(aclient: openai.AsyncOpenAI) -> None:
    cases = [(regex, prompt, regex) for regex, prompt in REGEXES]
    samples = await guided_samples(aclient, "guided_regex", cases, 100)
    for s in samples:
        if s.finish_reason == "stop":
            assert re.fullmatch(s.case, s.text), s
    assert report("guided_regex", samples) >= MIN_STOP_RATIO


CHOICES = ["Paris", "London", "Berlin", "Rio de Janeiro", "São Paulo"]


async def test_choice_outputs_match(aclient: openai.AsyncOpenAI) -> None:
    prompts = ["Write a poem about the sea.", "What is 2 + 2?", "Which city is the best?"]
    cases = [(prompt, prompt, CHOICES) for prompt in prompts]
    samples = await guided_samples(aclient, "guided_choice", cases, 200)
    for s in samples:
        assert s.finish_reason == "stop", s  # no choice is near max_tokens
        assert s.text in CHOICES, s


ARITHMETIC = """
start: expr
expr: NUM (OP NUM)~0..3
OP: "+" | "-" | "*"
NUM: /[0-9]{1,3}/
"""
ARITHMETIC_RE = r"\d{1,3}([-+*]\d{1,3}){0,3}"
SENTENCE = """
start: "The answer is " ANSWER "."
ANSWER: /[1-9][0-9]{0,2}/ | "unknown"
"""
SENTENCE_RE = r"The answer is ([1-9]\d{0,2}|unknown)\."


async def test_grammar_outputs_match(aclient: openai.AsyncOpenAI) -> None:
    cases = [
        (ARITHMETIC, ARITHMETIC_RE, "Write a sum."),
        (SENTENCE, SENTENCE_RE, "What is six times seven?"),
    ]
    by_pattern = [(pattern, prompt, grammar) for grammar, pattern, prompt in cases]
    samples = await guided_samples(aclient, "guided_grammar", by_pattern, 300)
    for s in samples:
        assert s.finish_reason == "stop", s  # both grammars are short and bounded
        assert re.fullmatch(s.case, s.text), s


# -- every guided field, on both endpoints, top level and inside extra_body -------------------

SMALL_SCHEMA = obj({"city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": integer(1, 9)})
PAIR_GRAMMAR = 'start: "(" NUM "," NUM ")"\nNUM: /[0-9]{1,2}/\n'


def _small_json(text: str) -> bool:
    return is_valid(text, SMALL_SCHEMA)


GUIDED: dict[str, tuple[str, Any, Any]] = {
    "json_object": ("guided_json", SMALL_SCHEMA, _small_json),
    "json_string": ("guided_json", json.dumps(SMALL_SCHEMA), _small_json),
    "regex": (
        "guided_regex",
        r"[A-Z][a-z]{2,8} \d{2}",
        lambda t: re.fullmatch(r"[A-Z][a-z]{2,8} \d{2}", t),
    ),
    "choice": (
        "guided_choice",
        ["alpha", "beta", "gamma"],
        lambda t: t in {"alpha", "beta", "gamma"},
    ),
    "grammar": (
        "guided_grammar",
        PAIR_GRAMMAR,
        lambda t: re.fullmatch(r"\(\d{1,2},\d{1,2}\)", t),
    ),
}


def output_text(path: str, body: dict[str, Any]) -> tuple[str, str]:
    choice = body["choices"][0]
    text = choice["message"]["content"] if path == CHAT_PATH else choice["text"]
    return text, choice["finish_reason"]


def request_body(path: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "max_tokens": SHORT_TOKENS, **HOT}
    if path == CHAT_PATH:
        base["messages"] = user("Plan a short trip.")
    else:
        base["prompt"] = "Here is a short trip plan:"
    return {**base, **kw}


@pytest.mark.parametrize("placement", ["top_level", "literal_extra_body", "openai_extra_body"])
@pytest.mark.parametrize("kind", list(GUIDED))
@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETIONS])
def test_guided_field_on_both_endpoints(
    http: httpx.Client, client: openai.OpenAI, path: str, kind: str, placement: str
) -> None:
    field, value, check = GUIDED[kind]
    seed = 7
    if placement == "openai_extra_body":
        if path == CHAT_PATH:
            r: Any = client.chat.completions.create(
                model=MODEL,
                messages=user("Plan a short trip."),
                max_tokens=SHORT_TOKENS,
                seed=seed,
                extra_body={field: value},
                **HOT,
            )
        else:
            r = client.completions.create(
                model=MODEL,
                prompt="Here is a short trip plan:",
                max_tokens=SHORT_TOKENS,
                seed=seed,
                extra_body={field: value},
                **HOT,
            )
        body = r.model_dump()
    else:
        extra = {field: value}
        fields = extra if placement == "top_level" else {"extra_body": extra}
        resp = http.post(path, json=request_body(path, seed=seed, **fields))
        assert resp.status_code == 200, resp.text
        body = resp.json()
    text, finish = output_text(path, body)
    assert finish == "stop", body
    assert check(text), (field, text)


# -- response_format --------------------------------------------------------------------------


def test_response_format_text_constrains_nothing(client: openai.OpenAI, http: httpx.Client) -> None:
    kw: dict[str, Any] = {"model": MODEL, "messages": user("Tell me a joke."), "max_tokens": 16}
    plain = client.chat.completions.create(temperature=0, **kw)
    text = client.chat.completions.create(temperature=0, response_format={"type": "text"}, **kw)
    assert text.choices[0].message.content == plain.choices[0].message.content
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    a = http.post(COMPLETIONS, json=body).json()
    b = http.post(COMPLETIONS, json={**body, "response_format": {"type": "text"}}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


async def test_response_format_json_object(aclient: openai.AsyncOpenAI) -> None:
    samples = await both_ways(
        aclient,
        "json_object",
        400,
        messages=user("Reply with a JSON object describing a car."),
        n=3,
        max_tokens=JSON_TOKENS,
        response_format={"type": "json_object"},
        **HOT,
    )
    for s in samples:
        if s.finish_reason == "stop":
            assert isinstance(json.loads(s.text), dict), s
        else:
            assert s.text.startswith("{"), s
    # Any object at all has no bound on its length: a looser bar than for schemas.
    assert report("json_object", samples) >= 0.5


WEATHER_SCHEMA = obj(
    {
        "city": string(20),
        "temperature_c": integer(-30, 45),
        "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]},
    }
)


async def test_response_format_json_schema(aclient: openai.AsyncOpenAI) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    }
    samples = await both_ways(
        aclient,
        "json_schema",
        500,
        messages=user("What is the weather like in Lisbon?"),
        n=3,
        max_tokens=JSON_TOKENS,
        response_format=fmt,
        **HOT,
    )
    for s in samples:
        assert s.finish_reason == "stop", s  # bounded schema
        validate(s.text, WEATHER_SCHEMA)


@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETIONS])
def test_response_format_json_schema_raw(http: httpx.Client, path: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA}}
    body = request_body(path, n=2, seed=3, response_format=fmt, max_tokens=JSON_TOKENS)
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    for i in range(2):
        text, finish = output_text(path, {"choices": [r.json()["choices"][i]]})
        assert finish == "stop"
        validate(text, WEATHER_SCHEMA)
    # Without a schema: any JSON object.
    fmt = {"type": "json_schema", "json_schema": {"name": "anything"}}
    r = http.post(path, json=request_body(path, seed=4, response_format=fmt, max_tokens=100))
    assert r.status_code == 200, r.text
    text, finish = output_text(path, r.json())
    if finish == "stop":
        assert isinstance(json.loads(text), dict), text
    else:
        assert text.startswith("{"), text


class Weather(pydantic.BaseModel):
    city: Literal["Paris", "Rome", "Oslo", "Lisbon"]
    temperature_c: int = pydantic.Field(ge=-30, le=45)
    sunny: bool


def test_parse_pydantic_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(
        model=MODEL,
        messages=user("What is the weather like in Rome today?"),
        response_format=Weather,
        n=3,
        seed=11,
        max_tokens=100,
        **HOT,
    )
    for c in r.choices:
        assert c.finish_reason == "stop"
        assert isinstance(c.message.parsed, Weather), c.message
        assert c.message.parsed == Weather.model_validate_json(c.message.content or "")


def test_stream_helper_with_pydantic_model(client: openai.OpenAI) -> None:
    deltas: list[str] = []
    done: list[Any] = []
    with client.chat.completions.stream(
        model=MODEL,
        messages=user("What is the weather like in Oslo today?"),
        response_format=Weather,
        seed=12,
        max_tokens=100,
        **HOT,
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
            elif event.type == "content.done":
                done.append(event.parsed)
        final = stream.get_final_completion()
    assert len(deltas) > 1  # really streamed
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "stop"
    assert message.content == "".join(deltas)
    assert isinstance(message.parsed, Weather)
    assert done == [message.parsed]


# -- combinations and conflicts ---------------------------------------------------------------

ANSWER_SCHEMA = obj({"answer": {"type": "string", "enum": ["yes", "no"]}})


def test_guided_json_with_json_object_schema_wins(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    """The seed's combination: the schema decides, not just "some object"."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=user("Do cats like water?"),
        response_format={"type": "json_object"},
        extra_body={"guided_json": ANSWER_SCHEMA},
        n=3,
        seed=5,
        max_tokens=SHORT_TOKENS,
        **HOT,
    )
    for c in r.choices:
        assert c.finish_reason == "stop"
        validate(c.message.content or "", ANSWER_SCHEMA)
    # A schema without a type, in a literal extra_body: json_object makes it an object.
    untyped = {"properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    body = request_body(
        CHAT_PATH,
        seed=6,
        response_format={"type": "json_object"},
        extra_body={"guided_json": untyped},
        max_tokens=JSON_TOKENS,
    )
    resp = http.post(CHAT_PATH, json=body)
    assert resp.status_code == 200, resp.text
    text, finish = output_text(CHAT_PATH, resp.json())
    if finish == "stop":
        assert isinstance(validate(text, untyped), dict), text


def test_same_schema_twice_is_accepted(http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}}
    body = request_body(CHAT_PATH, seed=8, guided_json=ANSWER_SCHEMA, response_format=fmt)
    r = http.post(CHAT_PATH, json=body)
    assert r.status_code == 200, r.text
    text, finish = output_text(CHAT_PATH, r.json())
    assert finish == "stop"
    validate(text, ANSWER_SCHEMA)


JSON_SCHEMA_FMT = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA}}


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT_PATH, {"guided_json": ANSWER_SCHEMA, "guided_regex": "a+"}, "guided_regex"),
        (CHAT_PATH, {"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
        (CHAT_PATH, {"guided_choice": ["a"], "guided_grammar": PAIR_GRAMMAR}, "guided_grammar"),
        (
            CHAT_PATH,
            {"guided_json": ANSWER_SCHEMA, "guided_grammar": PAIR_GRAMMAR},
            "guided_grammar",
        ),
        (
            CHAT_PATH,
            {"guided_choice": ["a"], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (CHAT_PATH, {"guided_regex": "a+", "response_format": JSON_SCHEMA_FMT}, "response_format"),
        (
            CHAT_PATH,
            {"guided_json": ANSWER_SCHEMA, "response_format": JSON_SCHEMA_FMT},
            "response_format",
        ),
        (
            CHAT_PATH,
            {"guided_json": {"type": "array"}, "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (COMPLETIONS, {"guided_json": ANSWER_SCHEMA, "guided_choice": ["a"]}, "guided_choice"),
        (
            COMPLETIONS,
            {"guided_regex": "a", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_conflicting_constraints_name_the_param(
    http: httpx.Client, path: str, fields: dict[str, Any], param: str
) -> None:
    r = http.post(path, json=request_body(path, **fields))
    assert_400(r, param)


def test_conflict_inside_extra_body_via_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=user("hi"),
            max_tokens=4,
            extra_body={"guided_regex": "a+", "guided_choice": ["a", "b"]},
        )
    assert e.value.param == "guided_choice"


# -- bad and pathological input ---------------------------------------------------------------


def assert_400(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"
    assert err["message"]


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_json": {"type": "nope"}}, "guided_json"),
        ({"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}}, "guided_json"),
        ({"guided_json": {"$ref": "#/$defs/missing"}}, "guided_json"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": [1, 2]}, "guided_json"),
        ({"guided_regex": "(a"}, "guided_regex"),
        ({"guided_regex": "[z-a]"}, "guided_regex"),
        ({"guided_regex": ""}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_choice": [1, 2]}, "guided_choice"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
        ({"guided_grammar": 'start: "a" ('}, "guided_grammar"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}}},
            "response_format",
        ),
    ],
)
@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETIONS])
def test_bad_constraint_names_the_param(
    http: httpx.Client, path: str, fields: dict[str, Any], param: str
) -> None:
    assert_400(http.post(path, json=request_body(path, **fields)), param)


def chained_rules(n: int) -> str:
    return "start: r0\n" + "".join(f"r{i}: r{i + 1}\n" for i in range(n)) + f'r{n}: "x"\n'


PATHOLOGICAL: list[tuple[str, Any]] = [
    ("guided_json", nested_schema(200)),
    ("guided_json", {"type": "string", "enum": [f"value-{i}" for i in range(20_000)]}),
    ("guided_regex", "(a{1000}){1000}"),
    ("guided_regex", "a{50000}"),
    ("guided_regex", "|".join(f"word{i:05d}" for i in range(20_000))),
    ("guided_regex", "(" * 1000 + "a" + ")" * 1000),
    ("guided_regex", "(a|aa)*" * 50 + "b"),
    ("guided_grammar", chained_rules(5000)),
    ("guided_choice", [f"option {i}" for i in range(20_000)]),
]
PATHOLOGICAL_SECONDS = 15.0  # compiles are bounded at 2 s; the rest is a loaded machine


async def test_pathological_constraints_answer_quickly(
    aclient: openai.AsyncOpenAI, server: Server
) -> None:
    """Each is refused (400 naming the field) or served, within seconds, one after another,
    while a normal stream and a normal constrained request run alongside and complete."""
    plain_kw: dict[str, Any] = {
        "messages": user("Write a long story about a dog."),
        "max_tokens": 40,
        "temperature": 0,
    }
    json_kw: dict[str, Any] = {
        "messages": user("Plan a short trip."),
        "max_tokens": JSON_TOKENS,
        "temperature": 0,
        "extra_body": {"guided_json": SMALL_SCHEMA},
    }
    plain_solo, json_solo = await asyncio.gather(
        chat_samples(aclient, "plain", False, **plain_kw),
        chat_samples(aclient, "json", False, **json_kw),
    )

    async def hostile() -> list[tuple[str, int, float, str | None, str]]:
        results = []
        async with httpx.AsyncClient(
            base_url=server.root, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
        ) as http:
            for field, value in PATHOLOGICAL:
                started = time.monotonic()
                r = await http.post(
                    CHAT_PATH,
                    json=request_body(CHAT_PATH, max_tokens=5, temperature=0, **{field: value}),
                )
                took = time.monotonic() - started
                param = r.json()["error"]["param"] if r.status_code == 400 else None
                results.append((field, r.status_code, took, param, r.text[:160]))
        return results

    plain, structured, results = await asyncio.gather(
        chat_samples(aclient, "plain", True, **plain_kw),
        chat_samples(aclient, "json", False, **json_kw),
        hostile(),
    )
    for field, status, took, param, text in results:
        print(f"\n{field}: {status} in {took:.2f} s: {text}")
        assert status in (200, 400), (field, status, text)
        if status == 400:
            assert param == field, text
        assert took < PATHOLOGICAL_SECONDS, (field, took)
    assert [s.text for s in plain] == [s.text for s in plain_solo]
    assert [s.text for s in structured] == [s.text for s in json_solo]
    assert _small_json(structured[0].text)
    # The deep schema is refused for its depth, at once.
    assert (results[0][1], results[0][0]) == (400, "guided_json")


# -- sharing a batch --------------------------------------------------------------------------


async def timed_stream(
    aclient: openai.AsyncOpenAI, **kw: Any
) -> tuple[str, str | None, float, float]:
    """Content, finish reason, and when the first and last content arrived."""
    first = last = 0.0
    parts: list[str] = []
    finish = None
    stream = await aclient.chat.completions.create(model=MODEL, stream=True, **kw)
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                first = first or time.monotonic()
                last = time.monotonic()
                parts.append(c.delta.content)
            finish = c.finish_reason or finish
    return "".join(parts), finish, first, last


async def test_constrained_and_unconstrained_share_a_batch(aclient: openai.AsyncOpenAI) -> None:
    """Run alone, then all together: every output is unchanged by its batch mates."""
    requests: list[dict[str, Any]] = [
        {"messages": user("Write a long story about a dog."), "max_tokens": 48, "temperature": 0},
        {"messages": user("Describe a person."), "max_tokens": 48, "temperature": 1, "seed": 9},
        {
            "messages": user("Plan a short trip."),
            "max_tokens": JSON_TOKENS,
            "temperature": 0,
            "extra_body": {"guided_json": SCHEMA_BY_ID["order_items"]},
        },
        {
            "messages": user("Describe a person."),
            "max_tokens": JSON_TOKENS,
            "temperature": 1,
            "seed": 9,
            "extra_body": {"guided_json": SCHEMA_BY_ID["person"]},
        },
        {
            "messages": user("Give me an e-mail address."),
            "max_tokens": SHORT_TOKENS,
            "temperature": 1,
            "seed": 10,
            "extra_body": {"guided_regex": REGEXES[1][0]},
        },
    ]
    solo = [await timed_stream(aclient, **kw) for kw in requests]
    together = await asyncio.gather(*(timed_stream(aclient, **kw) for kw in requests))
    assert [t[:2] for t in together] == [s[:2] for s in solo]
    # They really ran side by side: each had started before any of them ended.
    assert max(t[2] for t in together) < min(t[3] for t in together)
    # The unconstrained ones stayed free text; the constrained ones held.
    for text, _, _, _ in together[:2]:
        assert not is_valid(text, SCHEMA_BY_ID["person"]), text
    assert is_valid(together[2][0], SCHEMA_BY_ID["order_items"])
    assert is_valid(together[3][0], SCHEMA_BY_ID["person"])
    assert re.fullmatch(REGEXES[1][0], together[4][0])
