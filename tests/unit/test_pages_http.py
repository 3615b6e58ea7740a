"""The browser pages over HTTP, in-process (tests/harness.py): served without a key, with their
security headers, in every phase of the server's life; their static files, and nothing else
from the package. What they do in a browser is tested in tests/e2e/test_pages.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.harness import MODEL, AppStack
from tokenmill.api.app import create_app
from tokenmill.api.lifecycle import Lifecycle
from tokenmill.api.pages import PAGES, STATIC_DIR

SCRIPTS = sorted(p.name for p in STATIC_DIR.glob("*.js"))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[AppStack]:
    s = AppStack(tmp_path)
    s.open()
    yield s
    s.close()


def assert_secured(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", sorted(PAGES))
def test_the_pages_are_served_without_a_key(stack: AppStack, path: str) -> None:
    r = stack.sync_client(headers={}).get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert_secured(r)
    assert '<script type="module" src="/static/' in r.text
    assert MODEL not in r.text  # the page holds no data: the model list comes from the API


def test_root_redirects_to_the_playground(stack: AppStack) -> None:
    r = stack.sync_client(headers={}).get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/playground"


@pytest.mark.parametrize(
    ("name", "media"),
    [*((js, "text/javascript") for js in SCRIPTS), ("style.css", "text/css"),
     ("favicon.svg", "image/svg+xml")],
)  # fmt: skip
def test_the_static_files_are_served_with_their_type(
    stack: AppStack, name: str, media: str
) -> None:
    r = stack.sync_client(headers={}).get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == media  # module scripts need a JS type
    assert_secured(r)
    assert r.content == (STATIC_DIR / name).read_bytes()


async def raw_get(app: object, raw_path: bytes) -> int:
    """The status of a GET whose path reaches the app exactly as sent (an HTTP client would
    normalise the dot segments away)."""
    sent: list[dict[str, object]] = []
    path = raw_path.decode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": re.sub("%2e", ".", re.sub("%2f", "/", path, flags=re.I),
                                         flags=re.I),
        "raw_path": raw_path, "root_path": "", "query_string": b"", "headers": [],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }  # fmt: skip

    requested = False

    async def receive() -> dict[str, object]:
        nonlocal requested
        if requested:  # the client stays: a file response listens for it to leave
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[operator]
    return int(sent[0]["status"])  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "raw_path",
    [b"/static/../pages.py", b"/static/%2e%2e/pages.py", b"/static/..%2fpages.py",
     b"/static/../../../../../../etc/passwd", b"/static//etc/passwd", b"/static/",
     b"/static/nope.js", b"/static/%00.js"],
)  # fmt: skip
async def test_nothing_outside_the_static_directory_is_served(
    stack: AppStack, raw_path: bytes
) -> None:
    assert await raw_get(stack.app, raw_path) == 404
    assert await raw_get(stack.app, b"/static/common.js") == 200  # the same way, a real file


def test_the_pages_load_while_the_model_loads_and_while_draining(stack: AppStack) -> None:
    raw = TestClient(create_app(None, None, 1 << 20, lifecycle=Lifecycle()))
    for path in ("/playground", "/usage", "/static/playground.js"):
        assert raw.get(path).status_code == 200, path
    assert raw.get("/", follow_redirects=False).status_code == 307
    r = raw.get("/v1/models")  # what the page then shows: the API is not there yet
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    stack.app.state.lifecycle.drain()
    http = stack.sync_client()
    assert http.get("/playground").status_code == 200
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


class _Markup(HTMLParser):
    """What of a page a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.inline.append("inline <script>")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {k}=" for k in names if k == "style" or k.startswith("on")]


@pytest.mark.parametrize("name", sorted(PAGES.values()))
def test_the_pages_have_no_inline_script_or_style(name: str) -> None:
    markup = _Markup()
    markup.feed((STATIC_DIR / name).read_text())
    assert markup.inline == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_scripts_keep_the_key_in_session_storage_and_output_as_text(name: str) -> None:
    source = (STATIC_DIR / name).read_text()
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                   "localStorage", "document.cookie", "eval(", "new Function"):  # fmt: skip
        assert banned not in source, (name, banned)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", source), name  # no other origin
