"""The Batch API on the real server through the official client: a batch of 20 mixed chat
requests and one bad line, half price in the ledger, and a server killed mid-batch whose
successor finishes it without running a finished line again."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai

from tests.e2e.conftest import MODEL, Server, start_server, stop_server

KEY = "batch-admin"
PRICE = {"input": 2.0, "cached_input": 1.0, "output": 4.0}
SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}


def serve(tmp: Path, *extra: str) -> Server:
    prices = tmp / "prices.json"
    prices.write_text(json.dumps({"models": {MODEL: PRICE}}))
    return start_server(
        "--api-key", KEY, "--db", str(tmp / "t.db"), "--data-dir", str(tmp / "data"),
        "--prices", str(prices), *extra,
    )  # fmt: skip


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def line(i: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"task-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "max_tokens": 12,
                 "messages": [{"role": "user", "content": f"Say something about the number {i}."}],
                 **body},
    }  # fmt: skip


def mixed() -> list[dict[str, Any]]:
    """Twenty requests exercising the parameters a batch line may carry."""
    variants: list[dict[str, Any]] = [
        {}, {"temperature": 0}, {"temperature": 1.2, "seed": 7}, {"top_p": 0.5},
        {"logprobs": True, "top_logprobs": 2}, {"stop": ["."]}, {"n": 2},
        {"response_format": {"type": "json_schema",
                             "json_schema": {"name": "c", "schema": SCHEMA, "strict": True}},
         "max_tokens": 40},
        {"presence_penalty": 0.5}, {"max_completion_tokens": 5},
    ]  # fmt: skip
    return [line(i, **variants[i % len(variants)]) for i in range(20)]


def upload(c: openai.OpenAI, tmp: Path, lines: list[dict[str, Any]]) -> str:
    path = tmp / "input.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with open(path, "rb") as f:
        return c.files.create(file=f, purpose="batch").id


def wait(c: openai.OpenAI, batch_id: str, until: Any, within: float = 240.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        b = c.batches.retrieve(batch_id)
        if until(b):
            return b
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id}: {b.status} {b.request_counts}")


def results(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return (
        []
        if file_id is None
        else [json.loads(x) for x in c.files.content(file_id).text.splitlines()]
    )


def test_twenty_mixed_requests_and_a_bad_line(tmp_path: Path) -> None:
    server = serve(tmp_path)
    try:
        c = client(server)
        lines = [*mixed(), line(20, temperature=-1)]  # the bad one
        batch = c.batches.create(
            input_file_id=upload(c, tmp_path, lines), endpoint="/v1/chat/completions",
            completion_window="24h", metadata={"run": "e2e"},
        )  # fmt: skip
        done = wait(c, batch.id, lambda b: b.status in ("completed", "failed"))
        assert done.status == "completed", done
        counts = done.request_counts
        assert (counts.total, counts.completed, counts.failed) == (21, 20, 1)
        out = results(c, done.output_file_id)
        assert sorted(x["custom_id"] for x in out) == sorted(f"task-{i}" for i in range(20))
        by_id = {x["custom_id"]: x["response"]["body"] for x in out}
        assert len(by_id["task-6"]["choices"]) == 2
        assert by_id["task-4"]["choices"][0]["logprobs"]["content"]
        assert json.loads(by_id["task-7"]["choices"][0]["message"]["content"])["color"] in (
            "red", "green", "blue",
        )  # fmt: skip
        assert by_id["task-9"]["usage"]["completion_tokens"] <= 5
        (bad,) = results(c, done.error_file_id)
        assert bad["custom_id"] == "task-20" and bad["response"]["status_code"] == 400
        assert bad["response"]["body"]["error"]["param"] == "temperature"
        # Half price in the ledger, at the batch tier.
        usage = c.get("/usage", cast_to=object, options={"params": {"group_by": "tier"}})
        (row,) = [r for r in usage["data"] if r["tier"] == "batch"]  # type: ignore[index]
        full = (
            (row["prompt_tokens"] - row["cached_tokens"]) * PRICE["input"]
            + row["cached_tokens"] * PRICE["cached_input"]
            + row["completion_tokens"] * PRICE["output"]
        ) / 1e6
        assert row["requests"] == 20 and abs(row["cost"] - full / 2) < 1e-9
    finally:
        stop_server(server)


def test_a_killed_server_s_batch_finishes_after_a_restart_with_no_line_run_twice(
    tmp_path: Path,
) -> None:
    lines = [line(i, max_tokens=48, temperature=0) for i in range(24)]
    first = serve(tmp_path, "--max-num-seqs", "2")
    c = client(first)
    batch = c.batches.create(
        input_file_id=upload(c, tmp_path, lines), endpoint="/v1/chat/completions",
        completion_window="24h",
    )  # fmt: skip
    wait(c, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 4)
    first.proc.kill()  # SIGKILL: no drain, lines cut off mid-generation
    first.proc.wait()
    second = serve(tmp_path, "--max-num-seqs", "2")
    try:
        c = client(second)
        done = wait(c, batch.id, lambda b: b.status in ("completed", "failed"))
        assert done.status == "completed" and done.request_counts.completed == 24
        out = results(c, done.output_file_id)
        ids = [x["custom_id"] for x in out]
        assert sorted(ids) == sorted(f"task-{i}" for i in range(24))  # each once
        assert not results(c, done.error_file_id)
    finally:
        stop_server(second)
    # The ledger: one finished row per line; the lines the kill cut off ended interrupted.
    db = sqlite3.connect(tmp_path / "t.db")
    statuses = [s for (s,) in db.execute("select status from usage where tier = 'batch'")]
    assert statuses.count("finished") == 24
    assert set(statuses) <= {"finished", "interrupted"}
    # The two lines running at the kill (two at a time while lines remain), run again.
    assert statuses.count("interrupted") in (1, 2)
