"""The playground and usage pages in a real headless Chromium (Debian's, driven by Playwright),
against the real server and model: what a person sees, clicks and reads.

Chromium comes from ``$TOKENMILL_TEST_CHROMIUM`` (``.ci/chromium.sh`` installs and names it)
or the PATH; without it the tests skip with the reason. On a failure the page's screenshot
goes to ``test-artifacts/`` (or ``$TOKENMILL_TEST_ARTIFACTS``), and two screenshots are always
taken: ``playground.png`` after a streamed chat with logprobs and ``usage.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import ALIAS, API_KEY, MODEL, REPORTS, Server

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM_ENV = "TOKENMILL_TEST_CHROMIUM"
ARTIFACTS_ENV = "TOKENMILL_TEST_ARTIFACTS"
REPO = Path(__file__).resolve().parents[2]
# Headless, in a container as root (no sandbox), without a GPU or a big /dev/shm, and no
# calls home: the machine has no network beyond the loopback.
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking"]  # fmt: skip
ANSWER_TIMEOUT = 60_000  # ms: a short answer takes well under a second; CI may be loaded
SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}


def artifacts() -> Path:
    path = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium() -> str | None:
    return (
        os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    if not path:
        pytest.skip(f"{CHROMIUM_ENV} is not set and no chromium on PATH (.ci/chromium.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, server: Server, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the server; a screenshot if the test failed,
    and a failure if the page threw or broke its own Content-Security-Policy."""
    context = browser.new_context(base_url=server.root, viewport={"width": 1280, "height": 820})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield tab
    call = request.node.stash.get(REPORTS, {}).get("call")
    shot = artifacts() / f"failed-{request.node.name}.png"
    if call is None or call.failed:
        tab.screenshot(path=str(shot), full_page=True)
    else:
        shot.unlink(missing_ok=True)  # an earlier run's, no longer true
    context.close()
    assert problems == []


def set_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.press("#api-key", "Tab")  # a change event, as a person leaving the field


def open_playground(page: Page, key: str = API_KEY) -> None:
    page.goto("/playground")
    set_key(page, key)
    expect(page.locator("#model option").first).to_have_attribute("value", MODEL)


def ask(page: Page, message: str, max_tokens: int = 24, temperature: str = "0") -> Any:
    """Send ``message``; the request the page made. Waits for the answer to end."""
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", temperature)
    page.fill("#message", message)
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#send")
    expect(page.locator("#status")).to_have_text(re.compile(r"^done"), timeout=ANSWER_TIMEOUT)
    return sent.value


def last_answer(page: Page) -> str:
    return page.locator(".msg.assistant .body").last.text_content() or ""


def test_root_redirects_to_the_playground(page: Page, server: Server) -> None:
    r = httpx.get(f"{server.root}/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/playground"
    page.goto("/")
    assert page.url == f"{server.root}/playground"
    expect(page).to_have_title("tokenmill playground")


def test_a_chat_streams_with_usage_timings_and_logprob_colours(page: Page) -> None:
    open_playground(page)
    options = page.locator("#model option").all_inner_texts()
    assert options == [MODEL, ALIAS]  # /v1/models: the id, then its alias
    stored = page.evaluate(
        "() => [sessionStorage.getItem('tokenmill.apiKey'), localStorage.length, document.cookie]"
    )
    assert stored == [API_KEY, 0, ""]  # the tab's session only
    page.fill("#system", "Answer briefly.")
    request = ask(page, "Name three colors.")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.post_data_json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["max_tokens"] == 24 and body["temperature"] == 0 and "seed" not in body
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}

    assert last_answer(page).strip()
    completion = int(page.inner_text("#completion-tokens"))
    assert 1 <= completion <= 24 and int(page.inner_text("#prompt-tokens")) > 0
    assert re.fullmatch(r"\d+", page.inner_text("#cached-tokens"))
    ttft = int(page.inner_text("#ttft").removesuffix(" ms"))
    total = int(page.inner_text("#total-time").removesuffix(" ms"))
    assert 0 <= ttft <= total
    spans = page.locator(".msg.assistant .tok")
    assert 1 <= spans.count() <= completion
    for span in spans.all():
        p = float(span.get_attribute("data-p") or "nan")
        assert 0 < p <= 1
        assert "top alternatives:" in (span.get_attribute("title") or "")
        red, green, _ = map(int, re.findall(r"\d+", span.evaluate("s => s.style.backgroundColor")))
        assert (green >= red) == (p >= 0.5), (p, red, green)  # green when likely, red when not
    assert "".join(s.text_content() or "" for s in spans.all()) == last_answer(page)
    page.screenshot(path=str(artifacts() / "playground.png"), full_page=True)

    # The next turn carries the conversation; Clear forgets it.
    body = ask(page, "One more?").post_data_json
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    page.click("#clear")
    expect(page.locator(".msg")).to_have_count(0)


def test_json_mode_and_a_json_schema_give_json(page: Page) -> None:
    open_playground(page)
    page.uncheck("#logprobs")
    page.select_option("#format", "json_object")
    prompt = 'Reply with a JSON object with one key "color" whose value is a color name.'
    body = ask(page, prompt, max_tokens=48).post_data_json
    assert body["response_format"] == {"type": "json_object"} and "logprobs" not in body
    assert isinstance(json.loads(last_answer(page)), dict)

    page.select_option("#format", "json_schema")
    page.fill("#schema-name", "color")
    page.fill("#schema", json.dumps(SCHEMA))
    body = ask(page, prompt, max_tokens=48).post_data_json
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "color", "schema": SCHEMA, "strict": True},
    }
    jsonschema.validate(json.loads(last_answer(page)), SCHEMA)


def test_a_schema_that_is_not_json_is_refused_in_the_page(page: Page) -> None:
    open_playground(page)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/chat/" in r.url else None)
    page.select_option("#format", "json_schema")
    page.fill("#schema", '{"type": "object",')
    page.fill("#message", "hi")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("not valid JSON")
    assert sent == [] and page.input_value("#message") == "hi"


def test_a_wrong_or_missing_key_shows_the_401(page: Page) -> None:
    page.goto("/playground")
    set_key(page, "tm-wrong-key")
    expect(page.locator("#error")).to_contain_text("401 invalid_api_key: Incorrect API key")
    page.fill("#message", "hi")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("error")
    expect(page.locator("#error")).to_contain_text("Incorrect API key")
    expect(page.locator(".msg")).to_have_count(0)  # nothing kept: ready to resend
    assert page.input_value("#message") == "hi"
    with page.expect_request("**/v1/models") as models:
        set_key(page, "")  # an empty key sends no header (an open server needs none)
    assert "authorization" not in models.value.headers
    expect(page.locator("#error")).to_contain_text("You didn't provide an API key")


def test_the_playground_waits_for_a_loading_model(page: Page) -> None:
    """Served while the model loads (api/lifecycle.py), it asks again until the models come;
    the first answer is the loading server's 503, handed to the browser."""
    loading = {"message": "The model is still loading; retry shortly.", "type": "server_error",
               "param": None, "code": "model_loading"}  # fmt: skip
    answers = iter([json.dumps({"error": loading})])

    def models(route: Any) -> None:
        body = next(answers, None)
        if body is None:
            route.fallback()  # to the real server
        else:
            route.fulfill(status=503, content_type="application/json", body=body)

    open_playground(page)
    page.route("**/v1/models", models)
    page.reload()  # the key stays: the tab's session
    expect(page.locator("#error")).to_contain_text("503 model_loading")
    expect(page.locator("#model option").first).to_have_attribute("value", MODEL)
    expect(page.locator("#error")).to_be_hidden()


def sse(*events: str) -> str:
    return "".join(f"{e}\n\n" for e in events)


CHUNK = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
ERROR = {"message": "generation failed: boom", "type": "server_error", "param": None,
         "code": "engine_error"}  # fmt: skip


@pytest.mark.parametrize(
    "error_event",
    [f"data: {json.dumps({'error': ERROR})}", f"event: error\ndata: {json.dumps(ERROR)}"],
    ids=["data", "event"],
)
def test_an_error_mid_stream_is_shown(page: Page, error_event: str) -> None:
    """The server sends an engine failure as an event after the 200 (serving/chat.py); the
    real engine cannot be made to fail here, so the browser is handed such a stream."""
    open_playground(page)
    stream = sse(f"data: {json.dumps(CHUNK)}", error_event, "data: [DONE]")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream),
    )
    page.fill("#message", "hi")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("engine_error: generation failed: boom")
    expect(page.locator("#status")).to_have_text("error")
    expect(page.locator(".msg.assistant.partial .body")).to_have_text("Hel")


def cancelled(http: httpx.Client) -> int:
    """Requests the ledger has as cancelled (the client left), on any day."""
    data = http.get("/v1/usage", params={"group_by": "status"}).json()["data"]
    return sum(g["requests"] for g in data if g["status"] == "cancelled")


def test_stop_aborts_the_stream(page: Page, http: httpx.Client) -> None:
    before = cancelled(http)
    open_playground(page)
    page.uncheck("#logprobs")
    page.fill("#max-tokens", "1500")
    page.fill("#message", "Write a very long story about a dragon and a knight.")
    page.click("#send")
    expect(page.locator(".msg.assistant .body")).to_have_text(re.compile(r"\w"))
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator(".msg.assistant.partial")).to_have_count(1)
    deadline = time.monotonic() + 10  # the server sees the connection close, then aborts
    while cancelled(http) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cancelled(http) == before + 1


def test_the_usage_page_shows_todays_tokens_as_a_table_and_a_chart(
    page: Page, http: httpx.Client
) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert r.status_code == 200
    today = time.strftime("%Y-%m-%d", time.gmtime())
    open_playground(page)
    page.click("#usage-link")  # the key comes along: the same tab's sessionStorage
    # Waiting: the page's module script fills the field once it has loaded.
    expect(page).to_have_url(re.compile(r"/usage$"))
    expect(page.locator("#api-key")).to_have_value(API_KEY)
    row = page.locator(f'#usage-table tbody tr[data-day="{today}"][data-model="{MODEL}"]')
    expect(row).to_have_count(1)
    cells = row.locator("td").all_inner_texts()
    requests, prompt, _, completion, total = (int(c.replace(",", "")) for c in cells[2:7])
    assert requests >= 1 and prompt > 0 and completion > 0 and total == prompt + completion
    assert cells[7].startswith("$")
    expect(page.locator(f'#chart rect.bar[data-day="{today}"]')).not_to_have_count(0)
    expect(page.locator("#legend")).to_contain_text(MODEL)
    expect(page.locator("#summary")).to_contain_text("Project default")
    page.screenshot(path=str(artifacts() / "usage.png"), full_page=True)
    with page.expect_request(re.compile(r"/v1/usage\?")) as asked:
        page.select_option("#range", "7")
    query = httpx.URL(asked.value.url).params
    assert query["group_by"] == "day,model"
    assert float(query["end_time"]) - float(query["start_time"]) < 8 * 86400
    expect(row).to_have_count(1)


def test_the_usage_page_shows_the_401_of_a_wrong_key(page: Page) -> None:
    page.goto("/usage")
    set_key(page, "tm-wrong-key")
    expect(page.locator("#error")).to_contain_text("401 invalid_api_key: Incorrect API key")
    expect(page.locator("#usage-table tbody tr")).to_have_count(0)
    expect(page.locator("#chart svg")).to_have_count(0)
