"""Several models in one server, each with its own engine: listing, routing by id, per-model
default rate limits and prices (in-process, on fake runners)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.harness import MODEL, AppStack
from tokenmill.bench.soak.probe import metric_sum
from tokenmill.runner.fake import FakeRunner
from tokenmill.tenancy.limits import Limits
from tokenmill.tenancy.prices import Price, PriceList

SMALL = "small"  # the second model: a shorter context than the first
ALIAS = "acme/small-latest"


@pytest.fixture
def two(tmp_path: Path) -> Iterator[AppStack]:
    small = FakeRunner(n_ctx=128)
    stack = AppStack(
        tmp_path,
        more_models={SMALL: small},
        aliases={SMALL: (ALIAS,)},
        model_limits={SMALL: Limits(rpm=2, tpm=None)},
        prices=PriceList({SMALL: Price(input=1.0, output=2.0)}),
    )
    stack.keys.create_project("acme")
    stack.open()
    try:
        yield stack
    finally:
        stack.close()


def test_models_lists_every_model_and_alias_with_its_context_length(two: AppStack) -> None:
    models = two.official().models.list().data
    assert [m.id for m in models] == [MODEL, SMALL, ALIAS]
    lengths = [m.model_extra["context_length"] for m in models]  # type: ignore[index]
    assert lengths == [512, 128, 128]
    assert two.official().models.retrieve(ALIAS).model_extra["root"] == SMALL  # type: ignore[index]


def test_each_request_runs_on_its_models_engine(two: AppStack) -> None:
    small = two.contexts[1].engine.runner
    assert isinstance(small, FakeRunner)
    runners = {MODEL: two.runner, SMALL: small, ALIAS: small}
    c = two.official()
    for name, runner in runners.items():
        other = small if runner is two.runner else two.runner
        calls, other_calls = runner.decode_calls, other.decode_calls
        r = c.completions.create(model=name, prompt="abc", max_tokens=3, temperature=0)
        assert r.model == name
        assert runner.decode_calls > calls and other.decode_calls == other_calls
    # The context bound is each model's own.
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=SMALL, prompt="a" * 200, max_tokens=3)
    assert e.value.code == "context_length_exceeded"
    assert c.completions.create(model=MODEL, prompt="a" * 200, max_tokens=3).usage is not None


def test_unknown_model_is_404_naming_it(two: AppStack) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        two.official().completions.create(model="small-2", prompt="a", max_tokens=1)
    assert e.value.code == "model_not_found" and "small-2" in e.value.message


def test_a_key_without_limits_gets_the_models_defaults(two: AppStack) -> None:
    key, _ = two.keys.create_key(["acme"])  # no limits of its own
    c = two.official(key)
    for _ in range(3):  # the first model sets no default: unlimited
        c.completions.create(model=MODEL, prompt="a", max_tokens=1)
    raw = c.completions.with_raw_response.create(model=SMALL, prompt="a", max_tokens=1)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    c.completions.create(model=ALIAS, prompt="a", max_tokens=1)  # same model, same window
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model=SMALL, prompt="a", max_tokens=1)
    # A key's own limit wins over the model's.
    own, _ = two.keys.create_key(["acme"], rpm=5)
    raw = two.official(own).completions.with_raw_response.create(
        model=SMALL, prompt="a", max_tokens=1
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "5"


async def test_ledger_rows_carry_the_served_model_and_its_price(two: AppStack) -> None:
    c = two.official()
    c.completions.create(model=ALIAS, prompt="abc", max_tokens=2, temperature=0)
    c.completions.create(model=MODEL, prompt="abc", max_tokens=2, temperature=0)
    rows = sorted(await two.rows(), key=lambda r: r.model)
    assert [r.model for r in rows] == [MODEL, SMALL]
    assert rows[0].cost == 0.0
    assert rows[1].cost == pytest.approx((3 * 1.0 + 2 * 2.0) / 1e6)


def test_metrics_have_one_series_per_model(two: AppStack) -> None:
    c = two.official()
    c.completions.create(model=SMALL, prompt="abc", max_tokens=2)
    text = two.sync_client().get("/metrics").text
    assert f'tokenmill_engine_steps_total{{model="{MODEL}"}} 0' in text
    assert f'tokenmill_engine_steps_total{{model="{SMALL}"}}' in text
    assert (metric_sum(text, "tokenmill_engine_steps_total") or 0) > 0
