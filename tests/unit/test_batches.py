"""The Batch API in-process, on the fake runner, through the official async client: files,
a batch's life (validating, in_progress, completed; failed; cancelled; expired), the output
and error files, half price at the lowest priority outside the key's limits, and resuming
a batch from its result files without running a finished line again."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness import ADMIN, BASE_URL, MODEL, AppStack
from tokenmill.batches.store import BatchStore
from tokenmill.tenancy.prices import Price, PriceList

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    f = io.BytesIO("".join(json.dumps(x) + "\n" for x in lines).encode())
    f.name = "requests.jsonl"
    return f


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}],
                 "max_tokens": 3, **body},
    }  # fmt: skip


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[AppStack]:
    s = AppStack(tmp_path, max_num_seqs=4, prices=PriceList({MODEL: Price(1.0, 2.0)}))
    s.keys.create_project("acme")
    s.open()
    try:
        yield s
    finally:
        await s.app.state.batch_worker.stop()
        s.close()


async def finished(
    c: openai.AsyncOpenAI, batch_id: str, within: float = 20.0, until: set[str] = TERMINAL
) -> Any:
    """The batch once its status is one of ``until`` (by default: it has ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        b = await c.batches.retrieve(batch_id)
        if b.status in until:
            return b
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {b.status}")


async def results(c: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = (await c.files.content(file_id)).text
    return [json.loads(line) for line in text.splitlines()]


async def test_a_batch_completes_with_one_output_line_per_request(stack: AppStack) -> None:
    c = stack.official_async()
    lines = [chat_line(i, temperature=0.5 * (i % 3), seed=i) for i in range(7)]
    lines.append(chat_line(7, n=2))
    lines.append(chat_line(8, max_tokens=-1))  # a bad body: its 400 goes to the error file
    f = await c.files.create(file=jsonl(lines), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0 and f.filename == "requests.jsonl"
    assert (await c.files.retrieve(f.id)).id == f.id
    assert (await c.files.content(f.id)).content == jsonl(lines).getvalue()
    batch = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"job": "nightly"},
    )  # fmt: skip
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    done = await finished(c, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (9, 8)
    assert done.request_counts.failed == 1
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = await results(c, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(8)]
    for x in out:
        body = x["response"]["body"]
        assert x["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["service_tier"] == "batch" and x["response"]["request_id"] == body["id"]
    two = next(x for x in out if x["custom_id"] == "req-7")
    assert len(two["response"]["body"]["choices"]) == 2
    (err,) = await results(c, done.error_file_id)
    assert err["custom_id"] == "req-8" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "max_tokens"
    with pytest.raises(openai.ConflictError):
        await c.batches.cancel(batch.id)  # it has ended
    listed = await c.batches.list()
    assert [b.id for b in listed.data] == [batch.id]
    files = await c.files.list()
    assert {x.purpose for x in files.data} == {"batch", "batch_output"}


async def test_batch_rows_are_half_price_at_the_batch_tier(stack: AppStack) -> None:
    c = stack.official_async()
    f = await c.files.create(file=jsonl([chat_line(i) for i in range(3)]), purpose="batch")
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await finished(c, b.id)).status == "completed"
    rows = [r for r in await stack.rows() if r.tier == "batch"]
    assert len(rows) == 3 and all(r.status == "finished" for r in rows)
    for r in rows:
        full = (r.prompt_tokens - r.cached_tokens) * 1.0 + r.completion_tokens * 2.0
        cached = r.cached_tokens * 1.0
        assert r.cost == pytest.approx((full + cached) / 1e6 / 2)


async def test_batches_do_not_use_the_keys_rate_limits(stack: AppStack) -> None:
    key, _ = stack.keys.create_key(["acme"], rpm=1)
    c = stack.official_async(key)
    f = await c.files.create(file=jsonl([chat_line(i) for i in range(4)]), purpose="batch")
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await finished(c, b.id)
    assert done.status == "completed" and done.request_counts.completed == 4  # type: ignore[union-attr]
    # The key's one request a minute is still there.
    r = await c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    assert r.choices


@pytest.mark.parametrize(
    ("content", "line", "code"),
    [
        (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
         b"{not json\n", 2, "invalid_json_line"),
        (b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n', 1,
         "mismatched_url"),
        (b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}\n', 1,
         "missing_required_parameter"),
        (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
         b'\n{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n',
         3, "duplicate_custom_id"),
    ],
)  # fmt: skip
async def test_a_malformed_file_fails_validation_with_the_line_number(
    stack: AppStack, content: bytes, line: int, code: str
) -> None:
    c = stack.official_async()
    upload = io.BytesIO(content)
    upload.name = "bad.jsonl"
    f = await c.files.create(file=upload, purpose="batch")
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await finished(c, b.id)
    assert done.status == "failed" and done.failed_at and done.errors and done.errors.data
    err = done.errors.data[0]
    assert (err.line, err.code) == (line, code) and f"Line {line}" in (err.message or "")
    assert done.output_file_id is None


async def test_a_cancelled_batch_stops_and_keeps_what_ran(tmp_path: Path) -> None:
    stack = AppStack(tmp_path, start=False)  # no engine: nothing finishes
    stack.open()
    try:
        c = stack.official_async()
        f = await c.files.create(file=jsonl([chat_line(i) for i in range(3)]), purpose="batch")
        b = await c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await finished(c, b.id, until={"in_progress"})
        cancelling = await c.batches.cancel(b.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = await finished(c, b.id)
        assert done.status == "cancelled" and done.cancelled_at
        assert done.request_counts.completed == 0  # type: ignore[union-attr]
        assert (await c.batches.cancel(b.id)).status == "cancelled"  # again: no change
        rows = await stack.rows()
        assert rows and all(r.status == "cancelled" for r in rows)  # aborted, none lost
    finally:
        await stack.app.state.batch_worker.stop()
        stack.close()


async def test_a_resumed_batch_runs_only_the_lines_not_recorded(stack: AppStack) -> None:
    """As after a restart: two lines are in the output file, a third was torn mid-write."""
    c = stack.official_async()
    f = await c.files.create(file=jsonl([chat_line(i) for i in range(5)]), purpose="batch")
    store: BatchStore = stack.tenancy.batches  # type: ignore[assignment]
    row = store.create_batch("default", "open", f.id, "/v1/chat/completions", "24h", None)
    store.set(row.id, status="in_progress", in_progress_at=time.time(), total=5)
    output, _ = store.result_paths(row.id)
    earlier = [{"id": f"batch_req_{i}", "custom_id": f"req-{i}", "error": None,
                "response": {"status_code": 200, "request_id": "x", "body": {}}}
               for i in range(2)]  # fmt: skip
    output.write_text("".join(json.dumps(x) + "\n" for x in earlier) + '{"id": "batch_req_2", "cu')
    done = await finished(c, row.id)
    assert done.status == "completed" and done.request_counts.completed == 5  # type: ignore[union-attr]
    out = await results(c, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(5)]
    assert [r.tier for r in await stack.rows()] == ["batch"] * 3  # lines 2, 3 and 4 only


async def test_an_expired_batch_reports_what_did_not_run(tmp_path: Path) -> None:
    stack = AppStack(tmp_path, start=False)  # no engine: nothing finishes in time
    stack.open()
    try:
        c = stack.official_async()
        f = await c.files.create(file=jsonl([chat_line(i) for i in range(3)]), purpose="batch")
        b = await c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert b.expires_at == b.created_at + 24 * 3600
        await finished(c, b.id, until={"in_progress"})
        stack.tenancy.batches.set(b.id, expires_at=time.time() - 1)  # type: ignore[union-attr]
        done = await finished(c, b.id)
        assert done.status == "expired" and done.expired_at
        errors = await results(c, done.error_file_id)
        assert sorted(x["custom_id"] for x in errors) == ["req-0", "req-1", "req-2"]
        assert {x["error"]["code"] for x in errors} == {"batch_expired"}
        assert done.request_counts.failed == 3  # type: ignore[union-attr]
    finally:
        await stack.app.state.batch_worker.stop()
        stack.close()


async def test_bad_batch_requests_name_the_parameter(stack: AppStack) -> None:
    c = stack.official_async()
    f = await c.files.create(file=jsonl([chat_line(0)]), purpose="batch")
    for kw, param in [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file_nope"}, "file_id"),
    ]:
        args = {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h", **kw}  # fmt: skip
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
            await c.batches.create(**args)  # type: ignore[arg-type]
        assert e.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e2:
        await c.files.create(file=jsonl([chat_line(0)]), purpose="fine-tune")
    assert e2.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await c.batches.retrieve("batch_nope")
    # Another project's batch is not found either.
    stack.keys.create_project("other")
    key, _ = stack.keys.create_key(["other"])
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        await stack.official_async(key).batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        await stack.official_async(key).files.content(f.id)


async def test_a_broken_upload_is_a_400_naming_the_file(stack: AppStack) -> None:
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=ADMIN) as http:
        for headers, body in [
            ({"content-type": "multipart/form-data"}, b"no boundary"),
            ({"content-type": "application/json"}, b"{}"),
        ]:
            r = await http.post("/v1/files", content=body, headers=headers)
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "file", r.text
            assert err["type"] == "invalid_request_error"
        r = await http.post(
            "/v1/files", files={"file": ("a.jsonl", b"")}, data={"purpose": "batch"}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "file"


async def test_a_completions_batch_and_a_streamed_line(stack: AppStack) -> None:
    c = stack.official_async()
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": MODEL, "prompt": ["ab", "cd"][: i + 1], "max_tokens": 2,
                  "stream": i == 2}}
        for i in range(3)
    ]  # fmt: skip
    f = await c.files.create(file=jsonl(lines), purpose="batch")
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
    )
    done = await finished(c, b.id)
    assert done.status == "completed" and done.request_counts.completed == 2  # type: ignore[union-attr]
    out = {x["custom_id"]: x["response"]["body"] for x in await results(c, done.output_file_id)}
    assert out["c0"]["object"] == "text_completion" and len(out["c1"]["choices"]) == 2
    (streamed,) = await results(c, done.error_file_id)
    assert streamed["custom_id"] == "c2"
    assert streamed["response"]["body"]["error"]["param"] == "stream"
