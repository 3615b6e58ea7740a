"""Server-sent events framing, as the official OpenAI clients parse it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DONE = "data: [DONE]\n\n"


def event(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


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
