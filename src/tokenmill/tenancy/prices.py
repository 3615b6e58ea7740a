"""Per-model prices (USD per million tokens) from a JSON file, and the cost of a request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FLEX_DISCOUNT = 0.5  # flex is billed at half price unless the price file says otherwise
BATCH_DISCOUNT = 0.5  # so are the Batch API's requests


@dataclass(frozen=True)
class Price:
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # default: the input price


@dataclass(frozen=True)
class PriceList:
    """``{"models": {"<model id>": {"input": 0.1, "cached_input": 0.05, "output": 0.2}},
    "flex_discount": 0.5, "batch_discount": 0.5}``; models not listed cost nothing."""

    models: dict[str, Price] = field(default_factory=dict)
    flex_discount: float = FLEX_DISCOUNT
    batch_discount: float = BATCH_DISCOUNT

    @classmethod
    def load(cls, path: str | Path | None) -> PriceList:
        if not path:
            return cls()
        raw = json.loads(Path(path).read_text())
        models = {
            name: Price(
                input=float(p.get("input", 0.0)),
                output=float(p.get("output", 0.0)),
                cached_input=None if p.get("cached_input") is None else float(p["cached_input"]),
            )
            for name, p in raw.get("models", {}).items()
        }
        discounts = []
        for name, default in (("flex_discount", FLEX_DISCOUNT), ("batch_discount", BATCH_DISCOUNT)):
            discount = float(raw.get(name, default))
            if not 0.0 <= discount <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
            discounts.append(discount)
        return cls(models, *discounts)

    def with_defaults(self, prices: dict[str, Price]) -> PriceList:
        """These prices for the models this list does not price itself."""
        return PriceList({**prices, **self.models}, self.flex_discount, self.batch_discount)

    def cost(self, model: str, tier: str, prompt: int, cached: int, completion: int) -> float:
        price = self.models.get(model)
        if price is None:
            return 0.0
        cached_price = price.input if price.cached_input is None else price.cached_input
        usd = (
            (prompt - cached) * price.input + cached * cached_price + completion * price.output
        ) / 1e6
        if tier == "flex":
            return usd * (1.0 - self.flex_discount)
        if tier == "batch":
            return usd * (1.0 - self.batch_discount)
        return usd
