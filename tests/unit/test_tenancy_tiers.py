"""Which service tiers a key may use and what ``auto`` means."""

from __future__ import annotations

import pytest

from tokenmill.protocol.errors import BadRequest, Forbidden
from tokenmill.tenancy.tiers import PRIORITY, candidates, parse_tiers

ALL = frozenset({"default", "over-limit", "flex", "no-limit"})


def test_auto_is_default_then_over_limit_when_granted() -> None:
    assert candidates(None, ALL) == ("default", "over-limit")
    assert candidates("auto", frozenset({"default", "flex"})) == ("default",)
    assert candidates("auto", frozenset({"over-limit"})) == ("over-limit",)


def test_auto_without_default_or_over_limit_is_403() -> None:
    with pytest.raises(Forbidden) as e:
        candidates("auto", frozenset({"flex"}))
    assert e.value.param == "service_tier" and e.value.status_code == 403


@pytest.mark.parametrize("tier", ["default", "over-limit", "flex", "no-limit"])
def test_explicit_tier_must_be_granted(tier: str) -> None:
    assert candidates(tier, frozenset({tier})) == (tier,)
    with pytest.raises(Forbidden) as e:
        candidates(tier, ALL - {tier})
    assert e.value.code == "tier_not_allowed"


def test_unknown_tier_is_400() -> None:
    with pytest.raises(BadRequest):
        candidates("gold", ALL)


def test_priorities_order_the_tiers() -> None:
    assert PRIORITY["default"] == PRIORITY["no-limit"] < PRIORITY["over-limit"] < PRIORITY["flex"]


def test_parse_tiers() -> None:
    assert parse_tiers("default, flex,default") == ("default", "flex")
    for bad in ("", "auto", "default,gold"):
        with pytest.raises(ValueError):
            parse_tiers(bad)
