"""A request body's JSON, checked for what ``json.loads`` lets through but nothing later can use.

``json.loads`` accepts ``NaN``/``Infinity`` (not JSON), decodes ``"\\ud800"`` into a ``str``
that cannot be encoded (the tokenizer would fail far from the edge), and raises
``RecursionError`` or ``ValueError`` (over 4300 digits in an integer) where a client only
sent a strange body. Each becomes a 400 here; ``param`` names the field when there is one.
"""

from __future__ import annotations

import json
from typing import Any

from tokenmill.protocol.errors import BadRequest

# Deeper than any real request (a JSON schema in ``response_format`` included), shallow enough
# that recursive code after the edge (pydantic, grammar compilation, json.dumps) stays far from
# Python's recursion limit.
MAX_DEPTH = 100


def load_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; raise ``BadRequest`` otherwise."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, UnicodeDecodeError, _NotJSON) as e:
        raise _unparsable(str(e)) from e
    except ValueError as e:  # Python's limit on the digits of an int (CVE-2020-10735)
        raise _unparsable("an integer has too many digits") from e
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object", None, code="invalid_json")
    check_values(data)
    return data


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not valid JSON")


def _unparsable(why: str) -> BadRequest:
    return BadRequest(
        f"We could not parse the JSON body of your request: {why}", None, code="invalid_json"
    )


def _too_deep(field: str | None = None) -> BadRequest:
    """Named by the top-level field holding the deep value when the body could be parsed;
    past Python's recursion limit it could not, and only the body can be named."""
    if field is None:
        return BadRequest(
            f"The JSON body of your request is nested more than {MAX_DEPTH} levels deep",
            None,
            code="invalid_json",
        )
    return BadRequest(f"Invalid value for '{field}': nested more than {MAX_DEPTH} levels", field)


def check_values(data: Any) -> None:
    """Depth and strings of a parsed body, walked without recursion (the body may be deep).

    Each entry is (value, its path for messages, the top-level field it is in, its depth)."""
    stack: list[tuple[Any, str | None, str | None, int]] = [(data, None, None, 0)]
    while stack:
        node, path, field, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(field)
        if isinstance(node, str):
            _check_string(node, path)
        elif isinstance(node, dict):
            for key, value in node.items():
                _check_string(key, path, key=True)
                sub = key if path is None else f"{path}.{key}"
                stack.append((value, sub, key if field is None else field, depth + 1))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                stack.append((value, f"{path or ''}[{i}]", field, depth + 1))


def _check_string(s: str, path: str | None, key: bool = False) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        where = f"a key in '{path}'" if key and path else "a key" if key else f"'{path}'"
        raise BadRequest(
            f"Invalid value for {where}: the string holds a lone UTF-16 surrogate "
            f"({s[e.start]!a}), which is not valid Unicode",
            path,
        ) from None
