"""Benchmark workloads are reproducible and the report's maths is right."""

from __future__ import annotations

import json

import httpx
import pytest

from tokenmill.bench import report
from tokenmill.bench.runner import LevelResult, Sample, run_level
from tokenmill.bench.workloads import NAMES, make_requests


def test_same_seed_same_prompts_and_every_workload_builds() -> None:
    for w in NAMES:
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


def test_multi_turn_is_conversations_of_four_to_eight_turns() -> None:
    convs = make_requests("multi-turn", "m", 20, None, seed=1)
    assert all(3 <= len(c.follow_ups) <= 7 for c in convs)
    assert len({len(c.follow_ups) for c in convs}) > 2
    assert all(len(set(c.follow_ups)) == len(c.follow_ups) for c in convs)


def test_mixed_holds_its_kinds_in_fixed_proportions() -> None:
    reqs = make_requests("mixed", "m", 40, None, seed=2)
    chat = [r for r in reqs if r.path == "/chat/completions"]
    long = [r for r in chat if len(r.body["messages"][0]["content"]) > 3000]
    assert (len(chat) - len(long), len(reqs) - len(chat), len(long)) == (20, 16, 4)
    assert {r.body["max_tokens"] for r in reqs if r.path == "/completions"} == {24}
    assert reqs != make_requests("mixed", "m", 40, None, seed=3)  # another order


async def test_a_conversation_resends_its_history_with_the_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[dict[str, str]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        messages = json.loads(request.content)["messages"]
        seen.append(messages)
        chunk = {"choices": [{"delta": {"content": f"answer {len(seen)}"}}]}
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    conv = make_requests("multi-turn", "m", 1, None, seed=5)[0]
    transport = httpx.MockTransport(answer)
    orig = httpx.AsyncClient.__init__

    def with_mock(self: httpx.AsyncClient, *a: object, **kw: object) -> None:
        orig(self, *a, transport=transport, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.AsyncClient, "__init__", with_mock)  # the server: answer()
    result = await run_level("http://bench", "k", [conv], 1, "test")
    turns = 1 + len(conv.follow_ups)
    assert len(result.samples) == turns and all(s.ok for s in result.samples)
    assert [len(m) for m in seen] == [1 + 2 * i for i in range(turns)]
    last = seen[-1]
    assert last[0] == conv.body["messages"][0]
    assert [m["content"] for m in last[1::2]] == [f"answer {i}" for i in range(1, turns)]
    assert [m["content"] for m in last[2::2]] == list(conv.follow_ups)
