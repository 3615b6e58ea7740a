"""Checking a batch's input file, line by line, before any of it runs.

A line that is not a request at all (not JSON, no ``custom_id``, the wrong ``url`` or
``method``, a ``custom_id`` seen before) fails the whole batch with its line number, as
OpenAI's validation does; a request whose *body* is wrong (an unknown model, a bad
parameter) runs like any request and its 400 lands in the error file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_ERRORS = 20  # reported; a file with more is wrong everywhere anyway


@dataclass(frozen=True)
class Line:
    """One request of a batch: its 1-based line number in the input file."""

    number: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    line: int | None
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def parse(data: bytes, endpoint: str) -> tuple[list[Line], list[LineError]]:
    """The file's requests, or the errors that make it unusable (then no lines)."""
    lines: list[Line] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [LineError(None, "invalid_file", f"The file is not UTF-8: {e}")]
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a trailing newline or a blank line is not a request
        line, error = _line(number, raw, endpoint, seen)
        if error is not None:
            errors.append(error)
            if len(errors) >= MAX_ERRORS:
                break
        elif line is not None:
            lines.append(line)
    if not errors and not lines:
        errors.append(LineError(None, "empty_file", "The file has no requests."))
    if len(lines) > MAX_LINES:
        errors.append(
            LineError(None, "too_many_requests", f"A batch may have at most {MAX_LINES} requests.")
        )
    return ([] if errors else lines), errors


def _line(
    number: int, raw: str, endpoint: str, seen: set[str]
) -> tuple[Line | None, LineError | None]:
    def bad(code: str, message: str, param: str | None = None) -> tuple[None, LineError]:
        return None, LineError(number, code, f"Line {number}: {message}", param)

    try:
        item = json.loads(raw)
    except json.JSONDecodeError as e:
        return bad("invalid_json_line", f"not valid JSON ({e.msg} at column {e.colno}).")
    if not isinstance(item, dict):
        return bad("invalid_json_line", "each line must be a JSON object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return bad("missing_required_parameter", "custom_id must be a non-empty string.",
                   "custom_id")  # fmt: skip
    if custom_id in seen:
        return bad("duplicate_custom_id", f"custom_id {custom_id!r} appears twice.", "custom_id")
    if item.get("method") != "POST":
        return bad("invalid_method", "method must be POST.", "method")
    if item.get("url") != endpoint:
        return bad("mismatched_url", f"url must be the batch's endpoint, {endpoint}.", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return bad("invalid_body", "body must be a JSON object.", "body")
    seen.add(custom_id)
    return Line(number, custom_id, body), None
