"""The names served models answer to, and which model serves a request."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenmill.protocol.errors import ModelNotFound

if TYPE_CHECKING:
    from tokenmill.serving.common import ServingContext


@dataclass(frozen=True)
class ModelRegistry:
    """One served model under its id and any number of aliases (clients of other providers)."""

    model_id: str
    aliases: tuple[str, ...] = ()
    kernels: str = "deterministic"  # which llama.cpp kernels serve it (runner.kernels)
    context_length: int | None = None  # tokens of prompt + completion per sequence
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.model_id, *dict.fromkeys(a for a in self.aliases if a != self.model_id))

    def resolve(self, name: str, param: str | None = "model") -> str:
        """Return the name as the client spelled it (echoed in responses), or 404."""
        if name in self.names:
            return name
        raise ModelNotFound(f"The model '{name}' does not exist", param)

    def card(self, name: str) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "tokenmill",
            "root": self.model_id,
            "kernels": self.kernels,
        }
        if self.context_length is not None:
            # vLLM's name for it, which LangChain, LiteLLM and Open WebUI read.
            card["max_model_len"] = card["context_length"] = self.context_length
        return card

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.card(n) for n in self.names]}


class ServedModels:
    """Every model this server serves, each with its own engine: a request goes to the model
    whose id or alias it names."""

    def __init__(self, contexts: Sequence[ServingContext]) -> None:
        if not contexts:
            raise ValueError("no models to serve")
        self.contexts = list(contexts)
        self._by_name: dict[str, ServingContext] = {}
        for ctx in self.contexts:
            for name in ctx.models.names:
                if name in self._by_name:
                    raise ValueError(f"two models answer to {name!r}")
                self._by_name[name] = ctx

    def __iter__(self) -> Iterator[ServingContext]:
        return iter(self.contexts)

    def resolve(self, name: str, param: str | None = "model") -> tuple[ServingContext, str]:
        """The model serving ``name`` and the name as the client spelled it, or 404."""
        ctx = self._by_name.get(name)
        if ctx is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param)
        return ctx, name

    def card(self, name: str) -> dict[str, Any]:
        ctx, name = self.resolve(name, param=None)
        return ctx.models.card(name)

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [c for ctx in self for c in ctx.models.list()["data"]]}
