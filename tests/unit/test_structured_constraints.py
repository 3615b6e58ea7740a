"""grammar_for: every field form and combination, and a 400 naming the field for bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenmill.api.errors import from_structured
from tokenmill.structured import (
    ToolChoice,
    format_tool_calls,
    format_tool_result,
    grammar_for,
    parse_tool_calls,
    tools_system_prompt,
)
from tokenmill.structured.errors import InvalidConstraint

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"],
        },
    },
}
TOOLS = [WEATHER, ADD]


def schema_in(grammar: str) -> Any:
    """The JSON schema after ``%json`` in a one-rule grammar."""
    return json.loads(grammar.split("%json ", 1)[1].splitlines()[0])


def bad(param: str, **fields: Any) -> InvalidConstraint:
    with pytest.raises(InvalidConstraint) as info:
        grammar_for(**fields)
    assert info.value.param == param, info.value.message
    assert from_structured(info.value).status_code == 400  # what the edge answers
    return info.value


# -- one field at a time -----------------------------------------------------------------------


def test_nothing_constrains() -> None:
    assert grammar_for() is None
    assert grammar_for(response_format={"type": "text"}) is None
    assert grammar_for(tools=TOOLS, tool_choice="none") is None
    assert grammar_for(tools=[], tool_choice="auto") is None


@pytest.mark.parametrize("form", [SCHEMA, json.dumps(SCHEMA)])
def test_guided_json_object_or_string(form: Any) -> None:
    c = grammar_for(guided_json=form)
    assert c is not None and c.kind == "json" and c.param == "guided_json"
    schema = schema_in(c.grammar)
    assert schema["properties"] == SCHEMA["properties"]
    assert schema["x-guidance"]["whitespace_flexible"] is False


def test_schema_x_guidance_overrides_defaults() -> None:
    c = grammar_for(guided_json={**SCHEMA, "x-guidance": {"whitespace_flexible": True}})
    assert c is not None
    assert schema_in(c.grammar)["x-guidance"]["whitespace_flexible"] is True


def test_same_schema_same_grammar_text() -> None:
    a = grammar_for(guided_json=SCHEMA)
    b = grammar_for(guided_json=json.dumps(SCHEMA))
    assert a is not None and b is not None and a.grammar == b.grammar


def test_guided_regex() -> None:
    c = grammar_for(guided_regex=r"\d{3}/[a-z]+")
    assert c is not None and c.kind == "regex" and c.param == "guided_regex"
    assert c.grammar == "start: /[0-9]{3}\\/[a-z]+/\n"  # "/" escaped, \d is ASCII


def test_guided_choice() -> None:
    c = grammar_for(guided_choice=["yes", "no", 'say "hi"\n', "yes"])
    assert c is not None and c.kind == "choice"
    assert c.grammar == 'start: CHOICE_\nCHOICE_: "yes" | "no" | "say \\"hi\\"\\n"\n'


def test_guided_grammar_is_used_verbatim() -> None:
    lark = 'start: "a" NUM\nNUM: /[0-9]+/'
    c = grammar_for(guided_grammar=lark)
    assert c is not None and c.kind == "grammar" and c.grammar == lark


def test_response_format_json_object_and_schema() -> None:
    obj = grammar_for(response_format={"type": "json_object"})
    assert obj is not None and obj.param == "response_format"
    assert schema_in(obj.grammar)["type"] == "object"
    sch = grammar_for(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
        }
    )
    assert sch is not None and schema_in(sch.grammar)["required"] == ["a"]
    no_schema = grammar_for(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert no_schema is not None and schema_in(no_schema.grammar)["type"] == "object"


# -- combinations ------------------------------------------------------------------------------


def test_identical_schemas_agree() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": json.dumps(SCHEMA)}}
    c = grammar_for(guided_json=SCHEMA, response_format=fmt)
    assert c is not None and c.param == "guided_json"


def test_different_schemas_conflict() -> None:
    other = {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}
    bad("response_format", guided_json=SCHEMA, response_format=other)


def test_json_object_with_a_schema_the_schema_wins() -> None:
    c = grammar_for(guided_json=SCHEMA, response_format={"type": "json_object"})
    assert c is not None and schema_in(c.grammar)["required"] == ["a"]
    untyped = grammar_for(
        guided_json={"properties": {"b": {"type": "string"}}},
        response_format={"type": "json_object"},
    )
    assert untyped is not None and schema_in(untyped.grammar)["type"] == "object"
    bad("response_format", guided_json={"type": "array"}, response_format={"type": "json_object"})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_json": SCHEMA, "guided_regex": "a+"}, "guided_regex"),
        ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
        ({"guided_choice": ["a"], "guided_grammar": 'start: "a"'}, "guided_grammar"),
        ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_different_kinds_conflict(fields: dict[str, Any], param: str) -> None:
    bad(param, **fields)


def test_text_format_agrees_with_everything() -> None:
    c = grammar_for(guided_regex="a+", response_format={"type": "text"})
    assert c is not None and c.kind == "regex"


# -- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": "[1, 2]"}, "guided_json"),
        ({"guided_json": True}, "guided_json"),
        ({"guided_json": {"a": float("nan")}}, "guided_json"),
        ({"guided_regex": ""}, "guided_regex"),
        ({"guided_regex": 5}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_choice": ["a", 1]}, "guided_choice"),
        ({"guided_choice": "a"}, "guided_choice"),
        ({"guided_grammar": "  "}, "guided_grammar"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
            "response_format",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": 3}}},
            "response_format",
        ),
    ],
)
def test_bad_values_name_their_field(fields: dict[str, Any], param: str) -> None:
    bad(param, **fields)


def test_deep_schema_is_refused_without_recursion() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5000):  # json.dumps would hit Python's recursion limit
        deep = {"type": "object", "properties": {"k": deep}}
    assert "nested" in bad("guided_json", guided_json=deep).message
    text = '{"a":' * 5000 + "1" + "}" * 5000
    bad("guided_json", guided_json=text)


# -- tools -------------------------------------------------------------------------------------


def test_tools_default_to_auto() -> None:
    c = grammar_for(tools=TOOLS)
    assert c is not None and c.kind == "tools" and c.param == "tools"
    assert c.tool_choice == ToolChoice("auto") and c.tool_names == ("get_weather", "add")
    assert c.parallel_tool_calls is True
    assert "head_[lazy]" in c.grammar  # free text up to the first call
    assert [p for p, _ in c.parts] == [
        "tools[0].function.parameters",
        "tools[1].function.parameters",
    ]


def test_required_and_named() -> None:
    req = grammar_for(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert req is not None and req.tool_choice == ToolChoice("required")
    assert (
        req.grammar.startswith('start: "<tool_call>" calls_') and "calls_: call_\n" in req.grammar
    )
    assert "fn_1" in req.grammar
    par = grammar_for(tools=TOOLS, tool_choice="required")
    assert par is not None and '("\\n<tool_call>" call_)*' in par.grammar
    named = grammar_for(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    assert named is not None and named.tool_choice == ToolChoice("named", "add")
    assert '"const":"add"' in named.grammar and "get_weather" not in named.grammar
    assert "calls_: call_\n" in named.grammar  # one call, whatever parallel_tool_calls says


def test_auto_with_content_constraint() -> None:
    c = grammar_for(tools=TOOLS, response_format={"type": "json_object"})
    assert c is not None and c.kind == "tools"
    assert 'start: content_ | "<tool_call>" calls_' in c.grammar
    assert c.parts[0][0] == "response_format"
    lark = 'start: "a" NUM\nNUM: /[0-9]+/'
    sub = grammar_for(tools=TOOLS, guided_grammar=lark)
    assert sub is not None
    grammars = json.loads(sub.grammar)["grammars"]
    assert grammars[1] == {"name": "content", "lark_grammar": lark}


def test_forced_calls_ignore_response_format_but_refuse_guided() -> None:
    c = grammar_for(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})
    assert c is not None and "content_" not in c.grammar
    bad("guided_json", tools=TOOLS, tool_choice="required", guided_json=SCHEMA)


def test_parameters_defs_move_to_the_call_root() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/P"}},
                "$defs": {"P": {"type": "integer"}},
            },
        },
    }
    c = grammar_for(tools=[tool], tool_choice="required")
    assert c is not None
    call = schema_in(c.grammar.split("fn_0: ", 1)[1])
    assert call["$defs"] == {"P": {"type": "integer"}}
    assert "$defs" not in call["properties"]["arguments"]


def test_tool_without_parameters_takes_an_empty_object() -> None:
    c = grammar_for(tools=[{"type": "function", "function": {"name": "now"}}])
    assert c is not None and c.tools[0].schema() == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": ["x"]}, "tools[0]"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
            "tools[0].function.description",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}}, "tool_choice"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "add"}}}, "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}], "tools": TOOLS}, "functions"),
        ({"functions": [{"description": "no name"}]}, "functions[0].name"),
        ({"functions": [{"name": "f"}], "function_call": "required"}, "function_call"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
    ],
)
def test_bad_tools_name_their_field(fields: dict[str, Any], param: str) -> None:
    bad(param, **fields)


def test_legacy_functions() -> None:
    fns = [WEATHER["function"], ADD["function"]]
    c = grammar_for(functions=fns, function_call={"name": "add"})
    assert c is not None and c.param == "functions"
    assert c.tool_choice == ToolChoice("named", "add") and c.parallel_tool_calls is False
    assert c.tools[0].param == "functions[0].parameters"
    auto = grammar_for(functions=fns)
    assert auto is not None and auto.tool_choice == ToolChoice("auto")
    assert "calls_: call_\n" in auto.grammar  # legacy: one call at most
    assert grammar_for(functions=fns, function_call="none") is None


# -- prompt side -------------------------------------------------------------------------------


def test_tools_system_prompt_lists_tools_and_rules() -> None:
    c = grammar_for(tools=TOOLS, tool_choice="required")
    assert c is not None
    text = tools_system_prompt(c.tools, c.tool_choice)
    listed = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in listed] == TOOLS
    assert "<tool_call>" in text and "must call at least one" in text
    named = tools_system_prompt(c.tools, ToolChoice("named", "add"))
    assert "'add'" in named
    assert "answer the user directly" in tools_system_prompt(c.tools)


def test_format_tool_calls_round_trips_through_the_parser() -> None:
    text = format_tool_calls([("add", '{"x":1, "y": 2}'), ("get_weather", "not json")])
    content, calls = parse_tool_calls(text)
    assert content is None
    # Arguments that were not JSON travel as a JSON string and come back as they were.
    assert [(c.name, c.arguments) for c in calls] == [
        ("add", '{"x": 1, "y": 2}'),
        ("get_weather", "not json"),
    ]
    assert format_tool_result("42") == "<tool_response>\n42\n</tool_response>"
