"""Schemathesis hooks and checks for fuzzing the generation routes (tests/e2e/test_fuzz.py).

Loaded by ``schemathesis.toml`` beside this file. The checks come on top of schemathesis'
``not_a_server_error`` (no 5xx) and its request timeout (no hang).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from typing import Any

import schemathesis

MODEL = "smollm2-135m-instruct"
# Generated cases may ask for 2**63 tokens or 128 choices, and a chat request without a limit
# runs to the 4096-token context: each would take seconds to minutes on the real model and
# test nothing more than a short run does. So the fuzzer's cases are capped (what the limits
# do to over-large values is tested in tests/e2e/test_errors.py).
MAX_TOKENS = 4
MAX_N = 2
LIMITS = {"max_tokens": MAX_TOKENS, "max_completion_tokens": MAX_TOKENS, "n": MAX_N}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Cap lengths, and name the served model so cases reach the engine, not just a 404.

    A case hook, not ``map_body``: that one only sees the fuzzing phase's bodies, while the
    coverage phase's (boundary values, missing fields) would run uncapped.
    """
    if isinstance(case.body, dict):
        case.body = _capped(dict(case.body), context)
    return case


def _capped(body: dict[str, Any], context: Any) -> dict[str, Any]:
    for field, cap in LIMITS.items():
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[field] = cap
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    if context.operation is not None and context.operation.path.endswith("chat/completions"):
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_completion_tokens"] = MAX_TOKENS  # null is no limit too
        if isinstance(body.get("top_logprobs"), int) and body.get("logprobs") is None:
            # OpenAI's spec pairs top_logprobs with logprobs only in prose: a third of its
            # chat cases would stop at that 400 and never reach the engine.
            body["logprobs"] = True
    return body


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx and 5xx is JSON ``{"error": {"message", "type", "param", "code"}}``."""
    if response.status_code < 400:
        return None
    content_type = ",".join(response.headers.get("content-type", []))
    assert content_type.startswith("application/json"), f"error as {content_type!r}"
    err = _error_of(json.loads(response.content))
    assert err is not None, f"not OpenAI's error shape: {response.content[:300]!r}"
    return None


@schemathesis.check
def stream_ends_cleanly(ctx: Any, response: Any, case: Any) -> None:
    """A stream ends, with ``[DONE]`` and without a server error event on the way.

    Schemathesis stops reading a stream at the request timeout or after ``max-stream-events``
    (set far above what capped cases send), and marks it cut short: here, that is a hang.
    """
    content_type = ",".join(response.headers.get("content-type", []))
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        return None
    assert not response.stream_cut_short, "the stream did not end within the request timeout"
    events = [
        line[len("data: ") :]
        for line in response.content.decode("utf-8", "replace").splitlines()
        if line.startswith("data: ")
    ]
    assert events and events[-1] == "[DONE]", f"stream without [DONE]: {events[-3:]}"
    for data in events[:-1]:
        err = _error_of(json.loads(data))
        assert err is None or err["type"] != "server_error", f"server error in stream: {data}"
    return None


@schemathesis.check
class Tally:
    """Not a check: counts responses by status (and error code) for the test's report, into
    the JSON file named by ``TOKENMILL_FUZZ_STATS``. Replays while shrinking count again."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        key = str(response.status_code)
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                key += f" {json.loads(response.content)['error']['code']}"
        self.seen[key] += 1

    def after_run(self, ctx: Any) -> None:
        path = os.environ.get("TOKENMILL_FUZZ_STATS")
        if path:
            with open(path, "w") as f:
                json.dump(dict(self.seen.most_common()), f, indent=1)


def _error_of(body: Any) -> dict[str, Any] | None:
    if not isinstance(body, dict) or "error" not in body:
        return None
    err = body["error"]
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"}:
        return None
    if not (isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)):
        return None
    if not all(err[k] is None or isinstance(err[k], str) for k in ("param", "code")):
        return None
    return err
