"""Request ids (x-request-id in and out) and the one log line per request, in text and JSON
(in-process, on the fake runner)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ADMIN, MODEL, AppStack
from tokenmill.logs import JsonFormatter, TextFormatter


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[AppStack]:
    s = AppStack(tmp_path)
    s.open()
    try:
        yield s
    finally:
        s.close()


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.name == "tokenmill.access"]  # type: ignore[attr-defined]


def test_the_clients_id_comes_back_and_names_the_line(
    stack: AppStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tokenmill.access")
    http = stack.sync_client()
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 3, "temperature": 0}
    r = http.post("/v1/completions", json=body, headers={"x-request-id": "gw-42:abc"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "gw-42:abc"
    (line,) = lines(caplog)
    assert line["request_id"] == "gw-42:abc" and line["status"] == 200
    assert line["method"] == "POST" and line["path"] == "/v1/completions"
    assert line["model"] == MODEL and line["id"] == r.json()["id"]
    assert line["outcome"] == "finished" and line["completion_tokens"] == 3
    assert line["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert isinstance(line["duration_ms"], float)


def test_every_answer_gets_an_id_errors_and_streams_too(
    stack: AppStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tokenmill.access")
    http = stack.sync_client()
    bad = http.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": -1})
    unknown = http.get("/v1/models/nope")
    unauthorized = http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    with http.stream(
        "POST",
        "/v1/completions",
        json={"model": MODEL, "prompt": "a", "max_tokens": 2, "stream": True},
    ) as streamed:
        streamed.read()
    # An id a log parser could trip on is replaced, not echoed.
    spaced = http.get("/v1/models", headers={"x-request-id": "a b\tc"})
    ids = [r.headers["x-request-id"] for r in (bad, unknown, unauthorized, streamed, spaced)]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == 5
    statuses = [line["status"] for line in lines(caplog)]
    assert statuses == [400, 404, 401, 200, 200]
    assert lines(caplog)[3]["outcome"] == "finished"  # the stream's usage, once it ended


def test_probes_get_an_id_but_no_line(stack: AppStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tokenmill.access")
    r = stack.sync_client().get("/health")
    assert r.headers["x-request-id"].startswith("req_") and not lines(caplog)


def test_no_prompt_or_output_text_in_the_line(
    stack: AppStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = stack.sync_client().post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "secret words", "max_tokens": 4, "temperature": 0},
        headers=ADMIN,
    )
    out = r.json()["choices"][0]["text"]
    assert "secret words" not in caplog.text and (not out.strip() or out not in caplog.text)


def test_formats() -> None:
    record = logging.LogRecord("tokenmill.access", logging.INFO, "", 0, "POST /v1/x 200", (), None)
    record.fields = {"request_id": "r1", "status": 200, "user": None}
    data = json.loads(JsonFormatter().format(record))
    assert data["request_id"] == "r1" and data["status"] == 200 and data["level"] == "info"
    assert data["message"] == "POST /v1/x 200" and "time" in data
    text = TextFormatter().format(record)
    assert text.endswith("POST /v1/x 200 request_id=r1 status=200")


def test_content_is_logged_only_with_log_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tokenmill.access")
    plain = AppStack(tmp_path, db_name="a.db")
    content = AppStack(tmp_path, db_name="b.db", log_content=True)
    for s in (plain, content):
        s.open()
    try:
        for s in (plain, content):
            r = s.official().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "secret words"}], max_tokens=3
            )
            answer = r.choices[0].message.content
            stream = s.official().completions.create(
                model=MODEL, prompt="other secret", max_tokens=3, stream=True
            )
            streamed = "".join(ch.choices[0].text for ch in stream if ch.choices)
    finally:
        plain.close()
        content.close()
    got = lines(caplog)
    assert len(got) == 4
    for line in got[:2]:
        assert "prompt" not in line and "completion" not in line
        assert "secret" not in str(line)
    chat, comp = got[2], got[3]
    assert chat["prompt"] == {"messages": [{"role": "user", "content": "secret words"}]}
    assert chat["completion"] == [answer]
    assert comp["prompt"] == {"prompt": "other secret"}
    assert comp["completion"] == [streamed]
