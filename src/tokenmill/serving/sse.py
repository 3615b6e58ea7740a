"""Server-sent events framing, as the official OpenAI clients parse it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

DONE = "data: [DONE]\n\n"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def event(obj: Any) -> str:
    return f"data: {_dumps(obj)}\n\n"


@dataclass(frozen=True)
class ResponseMeta:
    """The fields every response object and chunk of one request repeats."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    service_tier: str
    include_usage: bool = False

    def envelope(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "service_tier": self.service_tier,
        }
        body.update(fields)
        if self.include_usage and "usage" not in body:
            body["usage"] = None  # every chunk carries usage: null until the last one
        return body

    def chunk_event(self, choices: list[dict[str, Any]], **fields: Any) -> str:
        """``event(self.envelope(choices=choices, **fields))``, the same bytes, with the
        fields every chunk repeats serialised once per stream rather than once per token."""
        tail = "".join(f',"{k}":{_dumps(v)}' for k, v in fields.items())
        if self.include_usage and "usage" not in fields:
            tail += ',"usage":null'
        return f"{self._chunk_head}{_dumps(choices)}{tail}}}\n\n"

    @cached_property
    def _chunk_head(self) -> str:
        head = _dumps(self.envelope(choices=None))
        cut = head.index(',"choices":null') + len(',"choices":')
        return f"data: {head[:cut]}"
