"""GrammarCompiler: errors name the field, results are cached, and hostile grammars are
refused quickly without crashing, hanging or bloating the process."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import threading
import time
from typing import Any

import pytest

from tokenmill.runner.fake import FakeRunner
from tokenmill.structured import GrammarCompiler, grammar_for, make_tokenizer
from tokenmill.structured.compiler import MAX_GRAMMAR_CHARS
from tokenmill.structured.constraints import Constraint
from tokenmill.structured.errors import CompilerBusy, InvalidConstraint, StructuredError

# A byte-level vocabulary (every byte a token, as in a byte-level BPE's base): compile errors
# and bounds concern the grammar, not the model's merges. The real vocabulary's masks are
# tested in tests/e2e/test_structured_masks.py.
BYTES = dataclasses.replace(
    FakeRunner().info,
    vocab_size=258,
    token_pieces=[b"", b""] + [bytes([b]) for b in range(256)],
    fingerprint="fp_bytes",
)


def compiler(**kw: Any) -> GrammarCompiler:
    return GrammarCompiler(make_tokenizer(BYTES), **kw)


def constraint(**fields: Any) -> Constraint:
    c = grammar_for(**fields)
    assert c is not None
    return c


def compile_error(**fields: Any) -> InvalidConstraint:
    with pytest.raises(InvalidConstraint) as info:
        compiler().compile(constraint(**fields))
    return info.value


TOOL = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {}}}},
}


def bad_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "g", "parameters": schema}}


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"guided_json": {"type": "string", "format": "bogus"}}, "guided_json", "Unknown format"),
        ({"guided_json": {"not": {"type": "string"}}}, "guided_json", "not"),
        ({"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}}, "guided_json", "5"),
        ({"guided_json": {"$ref": "#/$defs/missing"}}, "guided_json", "missing"),
        ({"guided_regex": "(?=lookahead)"}, "guided_regex", "look-around"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "regex"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar", "undefined_rule"),
        ({"guided_grammar": 'start: "a" ('}, "guided_grammar", ""),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}},
            "response_format",
            "type",
        ),
        (
            {"tools": [TOOL, bad_tool({"type": "string", "pattern": "(?<=x)"})]},
            "tools[1].function.parameters",
            "look",
        ),
        (
            {"tools": [TOOL], "guided_json": {"type": "string", "format": "bogus"}},
            "guided_json",
            "format",
        ),
        (
            {"functions": [{"name": "h", "parameters": {"dependentRequired": {"a": ["b"]}}}]},
            "functions[0].parameters",
            "",
        ),
    ],
)
def test_errors_name_the_field(fields: dict[str, Any], param: str, words: str) -> None:
    error = compile_error(**fields)
    assert error.param == param, error.message
    assert words in error.message
    assert "%json" not in error.message and "x-guidance" not in error.message  # no wrapper


def test_grammar_positions_are_kept_for_the_clients_own_grammar() -> None:
    assert compile_error(guided_grammar='start: "a"\nstart: "b"').message.count("at 2(")


def test_unsatisfiable_grammar() -> None:
    schema = {"type": "object", "required": ["a"], "additionalProperties": False}
    assert compile_error(guided_json=schema).param == "guided_json"


def test_cache_hits_and_lru_bound() -> None:
    comp = compiler(max_entries=2)
    a, b, c = (constraint(guided_regex=r) for r in ("a+", "b+", "c+"))
    first = comp.compile(a)
    assert comp.compile(a) is first and comp.hits == 1
    assert comp.matcher(a) is not comp.matcher(a)  # each sequence gets its own state
    comp.compile(b)
    comp.compile(c)  # evicts a
    misses = comp.misses
    assert comp.compile(a) is not first and comp.misses == misses + 1


def test_errors_are_cached_per_field() -> None:
    comp = compiler()
    schema = {"type": "string", "format": "bogus"}
    for _ in range(2):
        with pytest.raises(InvalidConstraint) as info:
            comp.compile(constraint(guided_json=schema))
        assert info.value.param == "guided_json"
    assert comp.hits == 1
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    with pytest.raises(InvalidConstraint) as info:
        comp.compile(constraint(response_format=fmt))  # same grammar text, another field
    assert info.value.param == "response_format"


def test_too_large_is_refused_before_compiling() -> None:
    big = [f"choice number {i}" for i in range(MAX_GRAMMAR_CHARS // 10)]
    error = compile_error(guided_choice=big)
    assert error.param == "guided_choice" and "too large" in error.message


def test_a_slow_compile_times_out_and_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    comp = compiler(timeout=0.1)
    build = comp._build_checked

    def slow(c: Constraint) -> Any:
        time.sleep(0.5)
        return build(c)

    monkeypatch.setattr(comp, "_build_checked", slow)
    with pytest.raises(InvalidConstraint, match="too complex") as info:
        comp.compile(constraint(guided_regex="x+"))
    assert info.value.param == "guided_regex"
    monkeypatch.undo()
    comp.timeout = 10.0
    comp.compile(constraint(guided_regex="y"))  # waits for the abandoned compile's slot
    with pytest.raises(InvalidConstraint, match="too complex"):  # the verdict is cached
        comp.compile(constraint(guided_regex="x+"))


def test_busy_compiler_answers_503() -> None:
    comp = compiler(timeout=0.05)
    assert comp._slots.acquire()  # as if another compile were running
    with pytest.raises(CompilerBusy):
        comp.compile(constraint(guided_regex="y"))
    comp._slots.release()
    comp.timeout = 5.0
    assert comp.compile(constraint(guided_regex="y"))  # "busy" was not cached


def test_concurrent_requests_share_one_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    comp = compiler(timeout=5.0)
    calls = 0
    build = comp._build_checked

    def counted(c: Constraint) -> Any:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return build(c)

    monkeypatch.setattr(comp, "_build_checked", counted)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(comp.compile(constraint(guided_regex="z"))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1 and len(results) == 4 and all(r is results[0] for r in results)


# -- hostile grammars ----------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"k": schema}, "required": ["k"]}
    return schema


def ref_fanout(levels: int) -> dict[str, Any]:
    """Each definition refers twice to the next: 2**levels paths if expanded naively."""
    defs: dict[str, Any] = {
        f"d{i}": {
            "anyOf": [
                {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}},
                {
                    "type": "object",
                    "properties": {
                        "a": {"$ref": f"#/$defs/d{i + 1}"},
                        "b": {"$ref": f"#/$defs/d{i + 1}"},
                    },
                },
            ]
        }
        for i in range(levels)
    }
    defs[f"d{levels}"] = {"type": "integer"}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def rule_chain(n: int) -> str:
    # Compiling recurses over the chain: on a default 8 MB stack ~3,000 rules crash Python.
    return "start: a0\n" + "\n".join(f"a{i}:a{i + 1}" for i in range(n)) + f'\na{n}: "y"'


WORDS = [f"w{i}x" for i in range(100_000)]
REFUSED = {  # must be a 400
    "50-level nesting": {"guided_json": nested(50)},
    "100k-literal regex alternation": {"guided_regex": "(" + "|".join(WORDS) + ")"},
    "100k choices": {"guided_choice": WORDS},
    "a{1000000}": {"guided_regex": "a{1000000}"},
    "(a{1000}){1000}": {"guided_regex": "(a{1000}){1000}"},
    "pattern a{1000000}": {"guided_json": {"type": "string", "pattern": "^a{1000000}$"}},
}
BOUNDED = {  # either compiles or is refused, quickly
    "(a*)*b": {"guided_regex": "(a*)*b"},
    "(x+x+)+y pattern": {"guided_json": {"type": "string", "pattern": "^(x+x+)+y$"}},
    "(.*a){30}": {"guided_regex": "(.*a){30}"},
    "[ab]*a[ab]{20}": {"guided_regex": "[ab]*a[ab]{20}"},
    "a{50000}": {"guided_regex": "a{50000}"},
    "20k-literal alternation": {"guided_regex": "(" + "|".join(WORDS[:20000]) + ")"},
    "20k choices": {"guided_choice": WORDS[:20000]},
    "$ref fan-out": {"guided_json": ref_fanout(60)},
    "recursive schema": {
        "guided_json": {
            "$ref": "#/$defs/n",
            "$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}},
        }
    },
    "10k-value enum": {"guided_json": {"enum": [f"value number {i}" for i in range(10000)]}},
    "2000 required properties": {
        "guided_json": {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(2000)},
            "required": [f"p{i}" for i in range(2000)],
        }
    },
    "ambiguous lark": {"guided_grammar": 'start: a+\na: "x" | "x" "x" | b\nb: a a'},
    "18k-rule chain": {"guided_grammar": rule_chain(18000)},
    # Deep in a tool's arguments the compile-time probe does not reach it; at generation the
    # matcher fails there and ends the sequence (test_structured_masks covers that path).
    "a{1000000} in a tool": {"tools": [bad_tool({"type": "string", "pattern": "^a{1000000}$"})]},
}


def max_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


@pytest.mark.parametrize("name", list(REFUSED))
def test_hostile_grammars_are_refused_quickly(name: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidConstraint):
        compiler().compile(constraint(**REFUSED[name]))
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("name", list(BOUNDED))
def test_expensive_grammars_are_bounded(name: str) -> None:
    started = time.monotonic()
    try:
        compiler().compile(constraint(**BOUNDED[name]))
    except StructuredError as e:
        assert isinstance(e, InvalidConstraint)
    assert time.monotonic() - started < 2.0


def test_hostile_grammars_do_not_bloat_memory() -> None:
    before = max_rss_mb()
    comp = compiler()
    for fields in [*REFUSED.values(), *BOUNDED.values()]:
        with contextlib.suppress(InvalidConstraint):
            comp.compile(constraint(**fields)).matcher()
    assert max_rss_mb() - before < 600
