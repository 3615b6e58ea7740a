"""Benchmark workloads are reproducible and the report's maths is right."""

from __future__ import annotations

from tokenmill.bench import report
from tokenmill.bench.runner import LevelResult, Sample
from tokenmill.bench.workloads import WORKLOADS, make_requests


def test_same_seed_same_prompts_and_every_workload_builds() -> None:
    for w in WORKLOADS:
        a = make_requests(w, "m", 5, None, seed=3)
        assert a == make_requests(w, "m", 5, None, seed=3)
        assert a != make_requests(w, "m", 5, None, seed=4)
        assert all(r.body["model"] == "m" for r in a)


def test_shared_prefix_requests_share_their_system_prompt() -> None:
    reqs = make_requests("shared-prefix", "m", 4, None, seed=1)
    systems = {r.body["messages"][0]["content"] for r in reqs}
    questions = {r.body["messages"][1]["content"] for r in reqs}
    assert len(systems) == 1 and len(next(iter(systems))) > 4000 and len(questions) > 1


def test_summary_percentiles_and_rates() -> None:
    samples = [
        Sample(True, 1.0, ttft=0.1 * (i + 1), gaps=[0.01] * 9, output_tokens=10) for i in range(10)
    ]
    samples.append(Sample(False, 0.5, error="boom"))
    row = report.summarize(LevelResult(concurrency=4, wall=2.0, samples=samples))
    assert row["errors"] == 1
    assert row["output_tokens_per_s"] == 50.0
    assert row["requests_per_s"] == 5.0
    assert abs(row["ttft_p50_ms"] - 550.0) < 1e-6
    assert abs(row["itl_p50_ms"] - 10.0) < 1e-6
    table = report.markdown_table([row])
    assert table.count("\n") == 2 and "| 4 |" in table
