"""The soak's request mix, in fixed proportions, and how each answer is classed.

Every call is small (16-64 tokens) so a 2-core machine keeps up for half an hour. Connections
are never reused: each request opens and closes one, which is what would leak descriptors.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokenmill.bench.soak.server import Keys
from tokenmill.bench.workloads import WORKLOADS

MODEL = "bench-model"  # tokenmill_cmd's --served-model-name
# One pass of the cycle, which workers walk in order, so the proportions hold over any run:
# chat 4, autocomplete 3, structured 2, cancelled streams 2, bad requests 2, limited key 2.
CYCLE = (
    "chat", "autocomplete", "cancel", "bad", "structured", "chat", "limited", "autocomplete",
    "chat", "cancel", "bad", "structured", "limited", "chat", "autocomplete",
)  # fmt: skip
CANCEL_AFTER = 3  # content chunks the client reads before it closes the connection
TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # a small request taking a minute is a failure

# How an answer is classed. The first three are what a healthy server gives.
COMPLETED = "completed"
CANCELLED = "cancelled"  # by the client, as planned
REFUSED = "refused"  # the 4xx that was expected
ERROR_EVENT = "error-event"  # a stream ended by an error event
TRUNCATED = "truncated"  # a stream that stopped without [DONE]
UNEXPECTED = "unexpected-status"
TRANSPORT = "transport-error"  # no answer: connection refused, reset, timed out
GOOD = frozenset({COMPLETED, CANCELLED, REFUSED})


@dataclass(frozen=True)
class Call:
    """One request to send, and the statuses that would be right for it."""

    kind: str
    variant: str
    path: str
    key: str
    body: dict[str, Any] | bytes  # bytes go out as they are (the malformed-JSON case)
    expect: tuple[int, ...] = (200,)
    stream: bool = False
    cancel_after: int | None = None


@dataclass
class Outcome:
    """What came back. ``status`` 200 means the server admitted the request."""

    kind: str
    variant: str
    status: int | None
    result: str
    latency: float
    response_id: str | None = None
    usage: dict[str, int] | None = None
    retry_after: str | None = None
    detail: str | None = None
    sent_at: float = 0.0  # seconds into the run


CHAT, LEGACY = "/v1/chat/completions", "/v1/completions"
# (variant, expected status, what changes in a valid chat body)
_BAD: tuple[tuple[str, int, dict[str, Any]], ...] = (
    ("invalid-param", 400, {"temperature": 5}),
    ("wrong-type", 400, {"max_tokens": "many"}),
    ("missing-field", 400, {}),
    ("unknown-model", 404, {"model": "no-such-model"}),
    ("bad-key", 401, {}),
    ("malformed-json", 400, {}),
)
_MALFORMED = b'{"model": "bench-model", "messages": [{"role": "user", "content": '


def _body(workload: str, rng: random.Random, max_tokens: int) -> dict[str, Any]:
    return WORKLOADS[workload](rng, MODEL, max_tokens).body


def _streamed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


@dataclass
class Mix:
    """Hands out the next call of the cycle; each kind rotates through its own variants."""

    keys: Keys
    rng: random.Random
    sent: Counter[str] = field(default_factory=Counter)
    _n: int = 0

    def next(self) -> Call:
        kind = CYCLE[self._n % len(CYCLE)]
        self._n += 1
        k = self.sent[kind]
        self.sent[kind] += 1
        return getattr(self, "_" + kind)(k)

    def _chat(self, k: int) -> Call:
        body = _streamed(_body("chat", self.rng, 32))
        return Call("chat", "stream", CHAT, self.keys.normal.secret, body, stream=True)

    def _autocomplete(self, k: int) -> Call:
        body = _body("autocomplete", self.rng, 16)
        return Call("autocomplete", "completion", LEGACY, self.keys.normal.secret, body)

    def _structured(self, k: int) -> Call:
        body, key = _body("guided-json", self.rng, 64), self.keys.normal.secret
        if k % 2 == 0:  # OpenAI's form of the same schema, answered whole
            schema = body.pop("guided_json")
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            }
            return Call("structured", "response_format", CHAT, key, body)
        return Call("structured", "guided_json", CHAT, key, _streamed(body), stream=True)

    def _cancel(self, k: int) -> Call:
        body = {**_body("chat", self.rng, 64), "stream": True}
        return Call("cancel", "stream", CHAT, self.keys.normal.secret, body, stream=True,
                    cancel_after=CANCEL_AFTER)  # fmt: skip

    def _limited(self, k: int) -> Call:
        body = _body("chat", self.rng, 16)
        return Call("limited", "chat", CHAT, self.keys.limited.secret, body, expect=(200, 429))

    def _bad(self, k: int) -> Call:
        variant, status, change = _BAD[k % len(_BAD)]
        body: dict[str, Any] | bytes = {**_body("chat", self.rng, 16), **change}
        key = self.keys.normal.secret
        if variant == "missing-field":
            body = {"model": MODEL}
        elif variant == "bad-key":
            key = "tm-not-a-key-of-this-server"
        elif variant == "malformed-json":
            body = _MALFORMED
        return Call("bad", variant, CHAT, key, body, expect=(status,))


async def send(client: httpx.AsyncClient, base: str, call: Call) -> Outcome:
    """Send ``call`` to the server at ``base`` (its root URL) and class the answer."""
    t0 = time.monotonic()
    content = call.body if isinstance(call.body, bytes) else json.dumps(call.body).encode()
    headers = {"Authorization": f"Bearer {call.key}", "Content-Type": "application/json"}
    try:
        async with client.stream("POST", base + call.path, content=content, headers=headers) as r:
            if call.stream and r.status_code == 200:
                return await _read_stream(call, r, t0)
            return _answered(call, r.status_code, r.headers, await r.aread(), t0)
    except httpx.HTTPError as e:
        return Outcome(
            call.kind,
            call.variant,
            None,
            TRANSPORT,
            time.monotonic() - t0,
            detail=f"{type(e).__name__}: {e}"[:200],
        )


def _answered(call: Call, status: int, headers: httpx.Headers, raw: bytes, t0: float) -> Outcome:
    out = Outcome(call.kind, call.variant, status, REFUSED, time.monotonic() - t0)
    out.retry_after = headers.get("retry-after")
    if status not in call.expect:
        out.result, out.detail = UNEXPECTED, raw[:200].decode("utf-8", "replace")
    if status != 200:
        return out
    try:
        body = json.loads(raw)
        out.response_id, out.usage = body["id"], _usage(body.get("usage"))
        if out.result != UNEXPECTED:
            out.result = COMPLETED
    except (ValueError, KeyError, TypeError):
        out.result, out.detail = UNEXPECTED, "200 without a completion: " + repr(raw[:160])
    return out


async def _read_stream(call: Call, r: httpx.Response, t0: float) -> Outcome:
    out = Outcome(call.kind, call.variant, 200, TRUNCATED, 0.0)
    chunks = 0
    try:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:].strip()
            if data == "[DONE]":
                out.result = COMPLETED
                break
            obj = json.loads(data)
            if "error" in obj:
                out.result, out.detail = ERROR_EVENT, str(obj["error"])[:200]
                break
            out.response_id = out.response_id or obj.get("id")
            out.usage = _usage(obj.get("usage")) or out.usage
            chunks += any(_has_content(c) for c in obj.get("choices") or ())
            if call.cancel_after is not None and chunks >= call.cancel_after:
                out.result = CANCELLED  # leaving the block closes the connection
                break
        else:
            out.detail = "the stream ended without [DONE]"
    except (httpx.HTTPError, ValueError) as e:
        out.detail = f"{type(e).__name__}: {e}"[:200]
    out.latency = time.monotonic() - t0
    return out


def _has_content(choice: dict[str, Any]) -> bool:
    return bool(choice.get("text") or (choice.get("delta") or {}).get("content"))


def _usage(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return None
    return {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens") if k in usage}
