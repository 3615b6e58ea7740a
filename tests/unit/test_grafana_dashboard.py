"""docs/grafana/tokenmill-dashboard.json: an importable dashboard whose every PromQL expression
names only series a real scrape of ``/metrics`` has (in-process, on the fake runner)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import MODEL, AppStack

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "tokenmill-dashboard.json"
NAME = re.compile(r"tokenmill_[a-z0-9_]+")  # e2e has digits
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Declared from the start but without a sample until a request is refused with a 429.
ONLY_AFTER_A_429 = {"tokenmill_rate_limited_total"}
DS = "${DS_PROMETHEUS}"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def scrape(stack: AppStack) -> str:
    """``/metrics`` after one chat request (the request-level series have no sample before)."""
    stack.official().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    r = stack.sync_client().get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def declared(text: str) -> set[str]:
    """Every series name the scrape's ``# TYPE`` lines promise (a histogram's three)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names.update(name + s for s in HISTOGRAM_SERIES)
            else:
                names.add(name)
    return names


def sampled(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1].isalpha()}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every panel target's ``expr`` and every template variable's query."""
    exprs = [d["expr"] for d in walk(dashboard["panels"]) if "expr" in d]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_every_name_in_every_query_is_scraped(dashboard: dict[str, Any], scrape: str) -> None:
    have, live = declared(scrape), sampled(scrape)
    assert live <= have
    used: set[str] = set()
    for expr in queries(dashboard):
        names = set(NAME.findall(expr))
        assert names, expr
        assert names <= have, (expr, names - have)
        used |= names
        for a, b in ("()", "[]", "{}"):  # a cheap check that nothing was cut short
            assert expr.count(a) == expr.count(b), expr
    # After one request every series the dashboard reads has a sample, but the 429 counter.
    assert used - live <= ONLY_AFTER_A_429, used - live


def test_importable_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["id"] is None
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    [var] = dashboard["templating"]["list"]
    assert var["name"] == "model" and var["multi"] and var["includeAll"]
    assert var["definition"] == "label_values(tokenmill_requests_running, model)"
    assert var["datasource"]["uid"] == DS

    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat"} and p["title"]
        assert p["datasource"]["uid"] == DS
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DS and t["expr"], p["title"]
            if "histogram_quantile" in t["expr"]:
                assert "_bucket{" in t["expr"] and "by (le, model)" in t["expr"]
                assert "[$__rate_interval]" in t["expr"]
