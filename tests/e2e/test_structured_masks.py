"""Token masks on the real SmolLM2 vocabulary: whatever the mask lets through is valid.

Each test walks a grammar by picking uniformly random allowed tokens (after ``apply_masks``
on random logits) until the grammar ends or allows end-of-generation, then checks the text
with an independent validator: ``jsonschema``, ``re.fullmatch``, a small parser, or
``parse_tool_calls`` plus ``jsonschema`` on every call's arguments.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from datetime import date
from typing import Any

import jsonschema
import llguidance
import numpy as np
import pytest

from tokenmill.config import embedded_model_path
from tokenmill.runner.base import ModelInfo
from tokenmill.runner.fake import FakeRunner
from tokenmill.runner.llama_cpp import LlamaRunner
from tokenmill.structured import (
    GrammarCompiler,
    Matcher,
    allocate_bitmask,
    apply_masks,
    grammar_for,
    make_tokenizer,
    parse_tool_calls,
)
from tokenmill.structured import matcher as matcher_module
from tokenmill.structured.matcher import apply_bitmask, fill_masks


@functools.cache
def smollm2() -> tuple[ModelInfo, llguidance.LLTokenizer, LlamaRunner]:
    """The embedded model's vocabulary (loaded once per test session)."""
    runner = LlamaRunner(str(embedded_model_path()), n_ctx=64, n_threads=1, n_seq_max=1, n_batch=8)
    tok = make_tokenizer(runner.info, lambda s: runner.tokenize(s, False, False))
    return runner.info, tok, runner


@functools.cache
def compiler() -> GrammarCompiler:
    return GrammarCompiler(smollm2()[1], timeout=10.0)


def matcher_for(**fields: Any) -> Matcher:
    constraint = grammar_for(**fields)
    assert constraint is not None
    return compiler().compile(constraint).matcher()


def tokens_of(text: str) -> list[int]:
    return smollm2()[2].tokenize(text, False, False)


def allowed(m: Matcher) -> np.ndarray:
    info = smollm2()[0]
    logits = np.zeros((1, info.vocab_size), dtype=np.float32)
    apply_masks(logits, [0], [m])
    return np.flatnonzero(np.isfinite(logits[0]))


@functools.cache
def token_classes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per token id: end-of-generation; only closing characters; one punctuation byte."""
    info = smollm2()[0]
    eog = np.zeros(info.vocab_size, dtype=bool)
    eog[list(info.eog_ids)] = True
    closing = np.array([bool(p) and set(p) <= set(b'"}])') for p in info.token_pieces])
    punct = np.array(
        [len(p) == 1 and not p.isalnum() and p not in b"([{<" for p in info.token_pieces]
    )
    return eog, closing, punct


def walk(m: Matcher, rng: np.random.Generator, budget: int = 300) -> str:
    """Random allowed tokens until the grammar ends. Past a third of the budget the walk
    heads for an end: mostly tokens made only of closing characters when allowed, else often
    a single non-opening punctuation byte (a required "@" or "." comes sooner than among
    whole words);
    past two thirds it ends as soon as the grammar allows."""
    info = smollm2()[0]
    is_eog, is_closing, is_punct = token_classes()
    out: list[int] = []
    for step in range(budget):
        if m.is_finished():
            break
        ok = allowed(m)
        assert ok.size, "the mask allows nothing"
        eos = ok[is_eog[ok]]
        assert bool(eos.size) == m.is_accepting()
        if eos.size and (rng.random() < 0.25 or step > budget * 2 // 3):
            assert m.accept(int(eos[0])) and m.is_finished()
            break
        pool = ok[~is_eog[ok]]
        if step > budget // 3:
            if is_closing[pool].any() and rng.random() < 0.5:
                pool = pool[is_closing[pool]]
            elif is_punct[pool].any() and rng.random() < 0.5:
                pool = pool[is_punct[pool]]
        token = int(rng.choice(pool))
        assert m.accept(token), m.error
        out.append(token)
    else:
        pytest.fail(f"no end after {budget} tokens: {info.detokenize(out)!r}")
    return b"".join(info.token_bytes(t) for t in out).decode("utf-8")


# -- JSON schemas --------------------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {"b": {"type": "object", "properties": {"c": {"type": "boolean"}}}},
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5},
    {"type": "string", "enum": ["red", "green", "blue", 'dark "blue"']},
    {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "integer"}]},
    {"type": "number", "exclusiveMinimum": -2.5, "maximum": 1000},
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "string", "minLength": 3, "maxLength": 12},
    {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "format": "date"},
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "maxItems": 2}},
            "required": ["id"],
        },
        "maxItems": 3,
    },
    {
        "type": "object",
        "properties": {
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
            "maybe": {"type": ["string", "null"]},
        },
        "required": ["flag", "nothing", "maybe"],
    },
    {"const": {"version": 2, "tags": ["a", "b"]}},
    {
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/addr"}, "work": {"$ref": "#/$defs/addr"}},
        "required": ["home"],
        "$defs": {
            "addr": {
                "type": "object",
                "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["zip"],
                "additionalProperties": False,
            }
        },
    },
    {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    {
        "oneOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                "required": ["kind", "r"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
                "required": ["kind", "side"],
                "additionalProperties": False,
            },
        ]
    },
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 100},
    {"enum": [1, "one", None, True, [1]]},
]

_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))"
)


def check_formats(schema: dict[str, Any], value: Any) -> None:
    """Formats jsonschema does not check without extra packages (RFC 3339)."""
    if schema.get("format") == "date-time":
        match = _DATE_TIME.fullmatch(value)
        assert match, value
        date.fromisoformat(value[:10])
        hour, minute, second = (int(match[i]) for i in (4, 5, 6))
        assert hour < 24 and minute < 60 and second <= 60, value  # 60: a leap second
        assert match[9] is None or (int(match[9]) < 24 and int(match[10]) < 60), value
    if schema.get("format") == "date":
        date.fromisoformat(value)


@pytest.mark.parametrize("schema", SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_random_walks_validate_against_the_schema(schema: dict[str, Any]) -> None:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    rng = np.random.default_rng(zlib.crc32(json.dumps(schema).encode()))
    for _ in range(3):
        text = walk(matcher_for(guided_json=schema), rng)
        value = json.loads(text)
        validator.validate(value)
        check_formats(schema, value)
        assert "\n" not in text  # compact JSON: no free whitespace


def test_json_object_walks_give_objects() -> None:
    rng = np.random.default_rng(7)
    for _ in range(3):
        value = json.loads(walk(matcher_for(response_format={"type": "json_object"}), rng))
        assert isinstance(value, dict)


# -- regex, choice, lark -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"\d{3}-\d{4}",
        r"(cat|dog)s?",
        r"[a-z]+@[a-z]+\.(com|org)",
        r"^yes|no$",
        r"a(b|c)*d",
        r"[^x]{2,5}",
    ],
)
def test_regex_walks_fullmatch(pattern: str) -> None:
    rng = np.random.default_rng(len(pattern))
    for _ in range(5):
        text = walk(matcher_for(guided_regex=pattern), rng)
        assert re.fullmatch(pattern.strip("^$"), text), (pattern, text)


def test_choice_walks_pick_a_choice() -> None:
    choices = ["positive", "negative", "neutral", "pos", 'with "quotes"\n', "ünïcode 🐢"]
    rng = np.random.default_rng(3)
    seen = {walk(matcher_for(guided_choice=choices), rng) for _ in range(30)}
    assert seen <= set(choices) and len(seen) > 2


def balanced(text: str) -> bool:
    """``expr: NUM | "(" expr "+" expr ")"``, by recursive descent."""

    def expr(i: int) -> int:
        if i < len(text) and text[i].isdigit():
            while i < len(text) and text[i].isdigit():
                i += 1
            return i
        if text[i : i + 1] != "(":
            return -1
        i = expr(i + 1)
        if i < 0 or text[i : i + 1] != "+":
            return -1
        i = expr(i + 1)
        return i + 1 if i >= 0 and text[i : i + 1] == ")" else -1

    return expr(0) == len(text)


def test_lark_walks_parse() -> None:
    grammar = 'start: expr\nexpr: NUM | "(" expr "+" expr ")"\nNUM: /[0-9]{1,3}/'
    rng = np.random.default_rng(11)
    for _ in range(10):
        text = walk(matcher_for(guided_grammar=grammar), rng)
        assert balanced(text), text


# -- tools ---------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"$ref": "#/$defs/num"}},
                "required": ["x", "y"],
                "$defs": {"num": {"type": "number", "minimum": 0}},
            },
        },
    },
    {"type": "function", "function": {"name": "now"}},
]
PARAMS = {t["function"]["name"]: t["function"].get("parameters", {}) for t in TOOLS}


def check_calls(text: str, n_min: int, n_max: int, names: set[str] | None = None) -> None:
    _, calls = parse_tool_calls(text)
    assert n_min <= len(calls) <= n_max, text
    for call in calls:
        assert call.name in (names or PARAMS)
        jsonschema.validate(json.loads(call.arguments), PARAMS[call.name])


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_parse_and_validate(parallel: bool) -> None:
    rng = np.random.default_rng(int(parallel))
    for _ in range(6):
        m = matcher_for(tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel)
        check_calls(walk(m, rng, budget=300), 1, 100 if parallel else 1)


def test_named_call_is_that_function() -> None:
    rng = np.random.default_rng(5)
    choice = {"type": "function", "function": {"name": "add"}}
    for _ in range(4):
        check_calls(walk(matcher_for(tools=TOOLS, tool_choice=choice), rng), 1, 1, {"add"})


def test_auto_allows_text_or_calls_and_enforces_calls() -> None:
    rng = np.random.default_rng(9)
    for _ in range(4):  # random text: rarely spells <tool_call>, and then it must be a call
        check_calls(walk(matcher_for(tools=TOOLS), rng, budget=60), 0, 100)
    for prefix in ["", "Let me look that up. "]:  # steer into a call, then walk on
        m = matcher_for(tools=TOOLS)
        for t in tokens_of(prefix + "<tool_call>\n"):
            assert m.accept(t)
        text = prefix + "<tool_call>\n" + walk(m, rng, budget=300)
        content, _ = parse_tool_calls(text)
        assert content == (prefix.strip() or None)
        check_calls(text, 1, 100)


def test_auto_forbids_a_call_that_breaks_the_schema() -> None:
    m = matcher_for(tools=TOOLS)
    bad = tokens_of('Sure <tool_call>\n{"name": "add", "arguments": {"x": "one"')
    assert m.ll.try_consume_tokens(bad) < len(bad)


def test_auto_with_json_content() -> None:
    rng = np.random.default_rng(2)
    for _ in range(4):
        text = walk(matcher_for(tools=TOOLS, response_format={"type": "json_object"}), rng, 300)
        if text.startswith("<tool_call>"):
            check_calls(text, 1, 100)
        else:
            assert isinstance(json.loads(text), dict)
    m = matcher_for(tools=TOOLS, response_format={"type": "json_object"})
    assert not m.count_valid(tokens_of("Hi"))  # no free text: content must be the object
    for t in tokens_of("<tool_call>"):
        assert m.accept(t)
    check_calls("<tool_call>" + walk(m, rng, 300), 1, 100)


def test_auto_with_a_lark_grammar_as_content() -> None:
    rng = np.random.default_rng(4)
    lark = 'start: "answer: " NUM\nNUM: /[0-9]{1,4}/'
    for _ in range(6):
        text = walk(matcher_for(tools=TOOLS, guided_grammar=lark), rng, 300)
        if text.startswith("<tool_call>"):
            check_calls(text, 1, 100)
        else:
            assert re.fullmatch(r"answer: [0-9]{1,4}", text), text


# -- matcher mechanics ---------------------------------------------------------------------------


def test_end_of_generation_only_when_the_grammar_allows() -> None:
    info = smollm2()[0]
    m = matcher_for(guided_choice=["ab", "abc"])
    assert not set(allowed(m)) & info.eog_ids
    for t in tokens_of("ab"):
        assert m.accept(t)
    ok = set(allowed(m))
    assert info.eog_ids <= ok and len(ok - info.eog_ids) >= 1 and not m.is_finished()
    assert m.accept(tokens_of("c")[0]) and m.is_finished()
    assert set(allowed(m)) == info.eog_ids  # complete: only end-of-generation


def test_a_forbidden_token_ends_the_sequence() -> None:
    info = smollm2()[0]
    m = matcher_for(guided_regex="[0-9]+")
    assert not m.accept(tokens_of("x")[0])
    assert m.error and set(allowed(m)) == info.eog_ids


def test_rollback_restores_the_mask() -> None:
    m = matcher_for(guided_json=SCHEMAS[0])
    prefix, more = tokens_of('{"name": "'), tokens_of('Bo", "age": 4')
    for t in prefix:
        assert m.accept(t)
    before = allowed(m)
    for t in more:
        assert m.accept(t)
    assert not np.array_equal(allowed(m), before)
    m.rollback(len(more))
    assert np.array_equal(allowed(m), before)
    assert m.count_valid(more) == len(more) and m.count_valid(tokens_of("}}")) < 2
    with pytest.raises(ValueError, match="roll back"):
        m.rollback(1000)


def test_draft_masks_match_stepping_through() -> None:
    info = smollm2()[0]
    drafts = tokens_of('{"name": "Bo", "age": 4}}}')  # grammatical up to the first extra }
    m = matcher_for(guided_json=SCHEMAS[0])
    bitmask = allocate_bitmask(len(drafts) + 1, info.vocab_size)
    k = m.fill_draft_masks(bitmask, 0, drafts)
    assert 0 < k < len(drafts)
    step = matcher_for(guided_json=SCHEMAS[0])
    for i in range(k + 1):
        one = allocate_bitmask(1, info.vocab_size)
        step.fill_mask(one, 0)
        assert np.array_equal(bitmask[i], one[0]), i
        if i < k:
            assert step.accept(drafts[i])
    assert np.array_equal(allowed(m), allowed(matcher_for(guided_json=SCHEMAS[0])))


def test_fork_is_independent() -> None:
    m = matcher_for(guided_choice=["cat", "dog"])
    child = m.fork()
    assert child.accept(tokens_of("dog")[0])
    assert np.array_equal(allowed(m), allowed(matcher_for(guided_choice=["cat", "dog"])))
    assert not np.array_equal(allowed(child), allowed(m))


def test_apply_masks_touches_only_constrained_rows() -> None:
    info = smollm2()[0]
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, info.vocab_size)).astype(np.float32)
    original = logits.copy()
    matchers = [matcher_for(guided_regex="[0-9]+"), matcher_for(guided_json=SCHEMAS[2])]
    apply_masks(logits, [1, 4], matchers)
    for row in (0, 2, 3, 5):
        assert np.array_equal(logits[row], original[row])
    for row, m in zip([1, 4], matchers, strict=True):
        ok = np.isfinite(logits[row])
        assert np.array_equal(np.flatnonzero(ok), allowed(m))
        assert np.array_equal(logits[row][ok], original[row][ok])


def test_batch_masks_equal_single_ones() -> None:
    info = smollm2()[0]
    kinds = [{"guided_regex": "[a-c]+"}, {"guided_json": SCHEMAS[0]}, {"tools": TOOLS}]
    matchers = [matcher_for(**kinds[i % 3]) for i in range(6)]
    batch = allocate_bitmask(len(matchers), info.vocab_size)
    fill_masks(batch, matchers)
    for i, m in enumerate(matchers):
        one = allocate_bitmask(1, info.vocab_size)
        m.fill_mask(one, 0)
        assert np.array_equal(batch[i], one[0])
    logits = np.zeros((len(matchers), info.vocab_size + 7), dtype=np.float32)
    apply_bitmask(logits, list(range(len(matchers))), batch)
    assert np.isinf(logits[:, info.vocab_size :]).all()  # past the vocabulary: never allowed


def test_a_slow_grammar_is_abandoned(monkeypatch: pytest.MonkeyPatch) -> None:
    info = smollm2()[0]
    m = matcher_for(guided_json=SCHEMAS[0])
    twin = m.fork()
    monkeypatch.setattr(matcher_module, "SLOW_MASK_SECONDS", -1.0)  # every mask is "slow"
    for _ in range(matcher_module.SLOW_MASKS_ALLOWED - 1):
        assert not set(allowed(m)) & info.eog_ids and m.error is None
    allowed(m)
    assert m.is_finished() and m.error and "too slow" in m.error
    assert set(allowed(m)) == info.eog_ids
    assert m.accept(min(info.eog_ids)) and not m.accept(tokens_of("{")[0])
    assert twin.error is None  # forks keep their own count


def test_fake_runner_vocabulary_works() -> None:
    info = FakeRunner().info
    tok = make_tokenizer(info)
    m = GrammarCompiler(tok).compile(grammar_for(guided_regex="[a-c]{2}!")).matcher()  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    logits = np.zeros((1, info.vocab_size), dtype=np.float32)
    text = ""
    while not m.is_finished():
        logits[:] = 0
        apply_masks(logits, [0], [m])
        ok = np.flatnonzero(np.isfinite(logits[0]))
        token = int(rng.choice(ok))
        if token in info.eog_ids:
            break
        assert m.accept(token)
        text += info.token_pieces[token].decode()
    assert re.fullmatch(r"[a-c]{2}!", text)
