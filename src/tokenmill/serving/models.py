"""The names the served model answers to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tokenmill.protocol.errors import ModelNotFound


@dataclass(frozen=True)
class ModelRegistry:
    """One served model under its id and any number of aliases (clients of other providers)."""

    model_id: str
    aliases: tuple[str, ...] = ()
    kernels: str = "deterministic"  # which llama.cpp kernels serve it (runner.kernels)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model_id, *(a for a in self.aliases if a != self.model_id))

    def resolve(self, name: str, param: str | None = "model") -> str:
        """Return the name as the client spelled it (echoed in responses), or 404."""
        if name in self.names:
            return name
        raise ModelNotFound(f"The model '{name}' does not exist", param)

    def card(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "tokenmill",
            "root": self.model_id,
            "kernels": self.kernels,
        }

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.card(n) for n in self.names]}
