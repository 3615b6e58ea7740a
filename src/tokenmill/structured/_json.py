"""JSON schema values from requests: parsed, bounded in depth, and dumped for llguidance."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tokenmill.structured.errors import InvalidConstraint

# Compact JSON with the separators models write (and json.dumps writes) and no free
# whitespace: flexible whitespace lets a model emit newlines forever inside an object.
# A schema's own "x-guidance" overrides these.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
MAX_SCHEMA_DEPTH = 64  # llguidance's JSON parser stops at 128 levels; fail early and clearly


def load_schema(value: Any, param: str) -> dict[str, Any]:
    """A JSON schema given as an object or as a JSON string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise InvalidConstraint(f"{param} is not valid JSON: {e}", param) from e
    if not isinstance(value, Mapping):
        raise InvalidConstraint(f"{param} must be a JSON schema object", param)
    if json_depth(value) > MAX_SCHEMA_DEPTH:
        raise InvalidConstraint(
            f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep", param
        )
    return dict(value)


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value may be adversarial)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_SCHEMA_DEPTH:
            break
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def dumps(value: Any, param: str) -> str:
    """Compact JSON text (key order kept: llguidance emits properties in schema order)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidConstraint(f"{param} is not a JSON schema: {e}", param) from e
