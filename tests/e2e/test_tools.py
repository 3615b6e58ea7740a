"""Tool calling end to end: tools and tool_choice, parallel calls, the legacy functions,
multi-turn conversations and streamed calls, through the official client and raw HTTP.

Unconstrained, this tiny model does not write well-formed calls of the offered functions on
its own (``tool_choice`` "auto" mostly answers in prose), so every valid call checked here
is the grammar's doing. Sampled runs use temperature 1 with a seed. Forced calls always end
with ``tool_calls``: a list of calls ends at a repeated call (the server stops generating
there) and drops a call cut by ``max_tokens`` after complete ones; only a first call cut
short ends with ``length``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server
from tests.e2e.helpers import CHAT_PATH, HOT, streamed_and_not, user

CALL_TOKENS = 300
SEEDS = range(20)

pytestmark = pytest.mark.timeout(600)
CLIENT_TIMEOUT = 600  # requests queue behind others


@pytest.fixture
async def aclient(deterministic_server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    """The tests below send a seed streamed and not side by side and compare the calls one for
    one: that needs outputs independent of batching, so they run on ``--deterministic``."""
    async with openai.AsyncOpenAI(
        base_url=deterministic_server.base_url, api_key=API_KEY, max_retries=0,
        timeout=CLIENT_TIMEOUT,
    ) as c:  # fmt: skip
        yield c


def tool(name: str, description: str, properties: dict[str, Any]) -> Any:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


WEATHER = tool(
    "get_weather",
    "Get the current weather in a city",
    {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
)
TIME = tool(
    "get_time",
    "Get the current time in a time zone",
    {"timezone": {"type": "string", "enum": ["UTC", "Europe/Paris", "Asia/Tokyo"]}},
)
EVENT = tool(
    "create_event",
    "Put an event in the calendar",
    {
        "title": {"type": "string", "maxLength": 20},
        "day": {"type": "string", "format": "date"},
        "attendees": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "maxItems": 2,
        },
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    },
)
TOOLS = [WEATHER, TIME, EVENT]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def check_call(name: str, arguments: str, allowed: set[str] | None = None) -> dict[str, Any]:
    """A call is of an offered function, with arguments valid for its parameters."""
    assert name in (allowed or set(PARAMETERS)), name
    args = json.loads(arguments)
    jsonschema.Draft202012Validator(PARAMETERS[name], format_checker=FORMATS).validate(args)
    assert isinstance(args, dict)
    return args


@dataclass(frozen=True)
class Choice:
    """One choice: content, calls as (name, arguments) and the finish reason; for streams
    also each call's first delta."""

    stream: bool
    finish_reason: str | None
    content: str | None
    calls: list[tuple[str, str]]
    ids: list[str]
    first_deltas: list[Any]


async def run_chat(aclient: openai.AsyncOpenAI, stream: bool, **kw: Any) -> list[Choice]:
    """One request, streamed or not; a stream is assembled as the client library does."""
    n = int(kw.get("n") or 1)
    if not stream:
        r = await aclient.chat.completions.create(model=MODEL, **kw)
        out = []
        for c in sorted(r.choices, key=lambda c: c.index):
            made: list[Any] = c.message.tool_calls or []
            assert all(t.type == "function" for t in made), made
            pairs = [(t.function.name, t.function.arguments) for t in made]
            out.append(
                Choice(False, c.finish_reason, c.message.content, pairs, [t.id for t in made], [])
            )
        return out
    content: dict[int, list[str]] = {i: [] for i in range(n)}
    calls: dict[int, dict[int, list[Any]]] = {i: {} for i in range(n)}  # index -> [name, args]
    ids: dict[int, list[str]] = {i: [] for i in range(n)}
    firsts: dict[int, list[Any]] = {i: [] for i in range(n)}
    finish: dict[int, str] = {}
    chunks = await aclient.chat.completions.create(model=MODEL, stream=True, **kw)
    async for chunk in chunks:
        for c in chunk.choices:
            assert c.index not in finish
            if c.delta.content:
                content[c.index].append(c.delta.content)
            for d in c.delta.tool_calls or []:
                if d.index not in calls[c.index]:
                    firsts[c.index].append(d)
                    assert d.id and d.function and d.function.name, d
                    ids[c.index].append(d.id)
                    calls[c.index][d.index] = [d.function.name, ""]
                else:
                    assert d.id is None and (d.function is None or d.function.name is None), d
                if d.function and d.function.arguments:
                    calls[c.index][d.index][1] += d.function.arguments
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert sorted(finish) == list(range(n)), finish
    return [
        Choice(
            True,
            finish[i],
            "".join(content[i]) or None,
            [(name, args) for _, (name, args) in sorted(calls[i].items())],
            ids[i],
            firsts[i],
        )
        for i in range(n)
    ]


async def both_ways(aclient: openai.AsyncOpenAI, seed: int, **kw: Any) -> list[Choice]:
    async def run(stream: bool, **more: Any) -> list[Choice]:
        return await run_chat(aclient, stream, **more)

    return await streamed_and_not(run, seed, **kw)


def check_forced(choices: list[Choice], allowed: set[str] | None = None) -> None:
    """Forced calls: at least one, all valid and none repeated, no content, and
    finish_reason tool_calls."""
    for c in choices:
        assert c.calls, c
        assert not c.content, c
        assert c.finish_reason == "tool_calls", c
        made = [(name, check_call(name, args, allowed)) for name, args in c.calls]
        assert all(made[i] not in made[:i] for i in range(len(made))), c  # no repeats
        assert len(set(c.ids)) == len(c.ids)


async def same_seed_both_ways(aclient: openai.AsyncOpenAI, seed: int, **kw: Any) -> list[Choice]:
    """Streamed and not with the same seed: the client must assemble the same calls."""
    full, streamed = await asyncio.gather(
        run_chat(aclient, False, seed=seed, **kw), run_chat(aclient, True, seed=seed, **kw)
    )
    assert [(c.calls, c.finish_reason) for c in streamed] == [
        (c.calls, c.finish_reason) for c in full
    ]
    return full + streamed


def report(label: str, choices: list[Choice]) -> None:
    counts = Counter(len(c.calls) for c in choices)
    print(f"\n{label}: calls per response {dict(sorted(counts.items()))}")


# -- tool_choice ------------------------------------------------------------------------------

PROMPTS = [
    "What is the weather like in Paris?",
    "What time is it in Tokyo?",
    "Schedule a lunch with Anna next Monday.",
]


@pytest.mark.slow
async def test_required_calls_end_with_tool_calls(aclient: openai.AsyncOpenAI) -> None:
    """Parallel calls allowed: this model would chain call after call (often the same one)
    until max_tokens; the list ends at the first repeat instead."""
    runs = [
        same_seed_both_ways(
            aclient,
            seed,
            messages=user(PROMPTS[seed % len(PROMPTS)]),
            tools=TOOLS,
            tool_choice="required",
            max_tokens=CALL_TOKENS,
            **HOT,
        )
        for seed in SEEDS
    ]
    choices = [c for group in await asyncio.gather(*runs) for c in group]
    check_forced(choices)
    report("tool_choice required", choices)


@pytest.mark.slow
async def test_named_function_yields_one_call_of_it(aclient: openai.AsyncOpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    runs = [
        same_seed_both_ways(
            aclient,
            100 + seed,
            messages=user(PROMPTS[seed % 2]),  # one about weather: still get_time
            tools=TOOLS,
            tool_choice=choice,
            n=2 if seed < 3 else 1,
            max_tokens=CALL_TOKENS,
            **HOT,
        )
        for seed in SEEDS
    ]
    choices = [c for group in await asyncio.gather(*runs) for c in group]
    check_forced(choices, {"get_time"})
    for c in choices:
        assert len(c.calls) == 1, c


@pytest.mark.slow
async def test_a_call_cut_by_max_tokens_is_dropped(aclient: openai.AsyncOpenAI) -> None:
    """A budget that fits one call and part of a next: the complete calls come back with
    tool_calls, the cut one is gone (and was never streamed). A first call cut short is
    all there is: finish_reason length, that one truncated call, as OpenAI does."""
    runs = [
        same_seed_both_ways(
            aclient,
            200 + seed,
            messages=user("What is the weather in Paris, London and Tokyo?"),
            tools=[WEATHER, TIME],
            tool_choice="required",
            max_tokens=48,
            **HOT,
        )
        for seed in SEEDS
    ]
    choices = [c for group in await asyncio.gather(*runs) for c in group]
    check_forced([c for c in choices if c.finish_reason != "length"])
    for c in choices:
        if c.finish_reason == "length":
            assert len(c.calls) == 1 and not c.content, c
    assert sum(c.finish_reason == "tool_calls" for c in choices) >= len(choices) // 2
    report("48 tokens", choices)


async def test_parallel_tool_calls_false_gives_exactly_one_call(
    aclient: openai.AsyncOpenAI,
) -> None:
    kw: dict[str, Any] = {
        "messages": user("What is the weather in Paris, London and Tokyo?"),
        "tools": TOOLS,
        "tool_choice": "required",
        "n": 4,
        "seed": 3,
        "max_tokens": CALL_TOKENS,
        **HOT,
    }
    single, streamed, control = await asyncio.gather(
        run_chat(aclient, False, parallel_tool_calls=False, **kw),
        run_chat(aclient, True, parallel_tool_calls=False, **kw),
        run_chat(aclient, False, **{**kw, "max_tokens": 80}),
    )
    for c in single + streamed:
        assert c.finish_reason == "tool_calls", c
        assert len(c.calls) == 1, c
        check_call(*c.calls[0])
    # The same request allowing parallel calls does make several: the flag did the work.
    assert any(len(c.calls) > 1 for c in control), control


def test_tool_choice_none_is_as_if_no_tools(client: openai.OpenAI) -> None:
    kw: Any = {
        "model": MODEL,
        "messages": user("What is the weather like in Paris?"),
        "max_tokens": 24,
        "temperature": 0,
    }
    plain = client.chat.completions.create(**kw)
    none = client.chat.completions.create(tools=TOOLS, tool_choice="none", **kw)
    c = none.choices[0]
    assert not c.message.tool_calls
    assert c.finish_reason in ("stop", "length")
    assert c.message.content == plain.choices[0].message.content
    assert none.usage is not None and plain.usage is not None
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # the tools were not shown


async def test_tool_choice_auto(aclient: openai.AsyncOpenAI) -> None:
    """Content or calls, whichever the model picks; calls are valid either way, and the
    tools are in the prompt."""
    choices = await both_ways(
        aclient,
        7,
        messages=user("Use the get_weather function to get the weather in Rome."),
        tools=TOOLS,
        tool_choice="auto",
        n=3,
        max_tokens=100,
        **HOT,
    )
    for c in choices:
        if c.finish_reason == "length":  # cut short: only the complete calls are checked
            for name, args in c.calls[:-1]:
                check_call(name, args)
        elif c.calls:
            assert c.finish_reason == "tool_calls", c
            for name, args in c.calls:
                check_call(name, args)
        else:
            assert c.finish_reason == "stop", c
            assert c.content and "<tool_call>" not in c.content, c
    plain = await aclient.chat.completions.create(
        model=MODEL, messages=user("Use the get_weather function."), max_tokens=1
    )
    default = await aclient.chat.completions.create(
        model=MODEL, messages=user("Use the get_weather function."), max_tokens=1, tools=TOOLS
    )
    assert plain.usage is not None and default.usage is not None
    assert default.usage.prompt_tokens > plain.usage.prompt_tokens + 100


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
    "additionalProperties": False,
}


async def test_auto_with_response_format_is_calls_or_schema_content(
    aclient: openai.AsyncOpenAI,
) -> None:
    """With one call at most, both branches are bounded: every choice finishes."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}
    choices = await both_ways(
        aclient,
        8,
        messages=user("What is the weather like in Oslo?"),
        tools=TOOLS,
        parallel_tool_calls=False,
        response_format=fmt,
        n=3,
        max_tokens=CALL_TOKENS,
        **HOT,
    )
    for c in choices:
        if c.calls:
            assert c.finish_reason == "tool_calls" and not c.content, c
            assert len(c.calls) == 1, c
            check_call(*c.calls[0])
        else:
            assert c.finish_reason == "stop", c
            jsonschema.validate(json.loads(c.content or ""), ANSWER_SCHEMA)


# -- legacy functions -------------------------------------------------------------------------

FUNCTIONS = [t["function"] for t in TOOLS]


def test_legacy_function_call(http: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": user("What is the weather like in Paris?"),
        "functions": FUNCTIONS,
        "function_call": {"name": "get_weather"},
        "max_tokens": CALL_TOKENS,
        "n": 2,
        "seed": 4,
        **HOT,
    }
    r = http.post(CHAT_PATH, json=body)
    assert r.status_code == 200, r.text
    for c in r.json()["choices"]:
        assert c["finish_reason"] == "function_call", c
        msg = c["message"]
        assert not msg.get("tool_calls"), msg
        assert msg["function_call"]["name"] == "get_weather"
        check_call("get_weather", msg["function_call"]["arguments"])
    # Streamed: function_call deltas, name first, then argument fragments.
    with http.stream("POST", CHAT_PATH, json={**body, "n": 1, "stream": True}) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["function_call"] for d in deltas if d.get("function_call")]
    assert calls and calls[0]["name"] == "get_weather"
    assert all("name" not in c for c in calls[1:])
    check_call("get_weather", "".join(c.get("arguments", "") for c in calls))
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == (
        "function_call"
    )
    # function_call "none": a plain answer.
    r = http.post(CHAT_PATH, json={**body, "function_call": "none", "max_tokens": 16, "n": 1})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert c["finish_reason"] in ("stop", "length")
    assert not c["message"].get("function_call") and c["message"]["content"]


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 21}])
async def test_streamed_calls_equal_non_streamed(
    aclient: openai.AsyncOpenAI, sampling: dict[str, Any]
) -> None:
    kw: dict[str, Any] = {
        "messages": user("Schedule a meeting with Bob and check the weather in Berlin."),
        "tools": TOOLS,
        "tool_choice": "required",
        "n": 2,
        "max_tokens": 150,  # a cut stream must equal the cut response too
        **sampling,
    }
    full, streamed = await asyncio.gather(
        run_chat(aclient, False, **kw), run_chat(aclient, True, **kw)
    )
    assert [(c.calls, c.finish_reason, c.content) for c in streamed] == [
        (c.calls, c.finish_reason, c.content) for c in full
    ]
    for c in streamed:
        assert c.calls
        for i, first in enumerate(c.first_deltas):
            assert first.index == i
            assert first.id and first.id.startswith("call_")
            assert first.type == "function"
            assert first.function.name == c.calls[i][0]


# -- conversations ----------------------------------------------------------------------------


def prompt_text(r: Any) -> str:
    """The prompt as the server rendered it (from ``prompt_logprobs=0``)."""
    entries = (r.model_extra or {})["prompt_logprobs"]
    return "".join(next(iter(e.values()))["decoded_token"] for e in entries if e is not None)


def test_multi_turn_tool_conversation(client: openai.OpenAI) -> None:
    messages: list[Any] = user("What is the weather like in Paris?")
    first = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=CALL_TOKENS,
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.type == "function"
    check_call(call.function.name, call.function.arguments)
    messages.append(first.choices[0].message)

    def answer(result: str) -> Any:
        return client.chat.completions.create(
            model=MODEL,
            messages=[*messages, {"role": "tool", "tool_call_id": call.id, "content": result}],
            tools=[WEATHER],
            temperature=0,
            max_tokens=24,
            extra_body={"prompt_logprobs": 0},
        )

    sunny = '{"temperature_c": 31, "conditions": "sunny"}'
    snowy = '{"temperature_c": -12, "conditions": "heavy snow and strong wind"}'
    a, b = answer(sunny), answer(snowy)
    for r, result in ((a, sunny), (b, snowy)):
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        text = prompt_text(r)
        assert result in text  # the tool's result is in the prompt
        assert call.function.arguments in text  # and so is the call it answers
        assert r.usage is not None and first.usage is not None
        assert r.usage.prompt_tokens > first.usage.prompt_tokens + 10
    assert a.usage is not None and b.usage is not None
    assert b.usage.prompt_tokens > a.usage.prompt_tokens

    # The answer depends on the result (compared without the random call ids).
    def said(r: Any) -> tuple[Any, ...]:
        m = r.choices[0].message
        return m.content, [(t.function.name, t.function.arguments) for t in m.tool_calls or []]

    assert said(a) != said(b)


class GetWeather(pydantic.BaseModel):
    """Get the current weather in a city."""

    city: Literal["Paris", "London", "Tokyo", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


class Summary(pydantic.BaseModel):
    city: Literal["Paris", "London", "Tokyo", "Rome"]
    temperature: int = pydantic.Field(ge=-50, le=50)
    advice: Literal["take an umbrella", "wear sunscreen", "dress warmly"]


def test_multi_turn_with_the_openai_helpers(client: openai.OpenAI) -> None:
    """pydantic_function_tool, chat.completions.stream and .parse, over two turns."""
    tools = [openai.pydantic_function_tool(GetWeather)]
    messages: list[Any] = [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "Should I take an umbrella in London today?"},
    ]
    done: list[Any] = []
    with client.chat.completions.stream(
        model=MODEL,
        messages=messages,
        tools=tools,
        tool_choice="required",
        seed=31,
        max_tokens=CALL_TOKENS,
        **HOT,
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append(event)
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls and len(done) == len(message.tool_calls)
    for event, call in zip(done, message.tool_calls, strict=True):
        assert event.name == call.function.name == "GetWeather"
        assert isinstance(event.parsed_arguments, GetWeather)
        assert call.function.parsed_arguments == event.parsed_arguments
        assert GetWeather.model_validate_json(call.function.arguments) == event.parsed_arguments
    messages.append(message)
    for call in message.tool_calls:
        args = call.function.parsed_arguments
        assert isinstance(args, GetWeather)
        result = {"city": args.city, "temperature_c": 14, "rain": True}
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    second = client.chat.completions.parse(
        model=MODEL,
        messages=messages,
        tools=tools,
        tool_choice="none",
        response_format=Summary,
        n=3,
        seed=32,
        max_tokens=100,
        **HOT,
    )
    for c in second.choices:
        assert c.finish_reason == "stop"
        assert not c.message.tool_calls
        assert isinstance(c.message.parsed, Summary), c.message


# -- bad input --------------------------------------------------------------------------------


def body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": user("hi"), "max_tokens": 4, **kw}


NAMELESS = {"type": "function", "function": {"parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [NAMELESS]}, "tools[0].function.name"),
        ({"tools": [WEATHER, NAMELESS]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": {"get_weather": WEATHER}}, "tools"),
        (
            {"tools": [tool("f", "bad", {"x": {"type": "nope"}})]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [WEATHER, tool("g", "bad", {"x": {"pattern": "(a"}})]},
            "tools[1].function.parameters",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {"tools": TOOLS, "tool_choice": "required", "guided_json": {"type": "object"}},
            "guided_json",
        ),
        ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a+"}, "guided_regex"),
        ({"functions": FUNCTIONS, "function_call": {"name": "nope"}}, "function_call"),
        ({"functions": FUNCTIONS, "tools": TOOLS}, "functions"),
        ({"functions": [{"parameters": {}}]}, "functions[0].name"),
    ],
)
def test_bad_tools_name_the_param(http: httpx.Client, fields: dict[str, Any], param: str) -> None:
    r = http.post(CHAT_PATH, json=body(**fields))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_bad_tools_via_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=user("hi"),
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}},
            max_tokens=4,
        )
    assert e.value.param == "tool_choice"
    assert "launch_rocket" in str(e.value)
