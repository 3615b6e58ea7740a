"""The browser pages: a chat playground and a usage page, plain HTML + CSS + JS modules from
``static/`` (no build step).

They are same-origin with the API, so they need no CORS. They hold no data: the key is typed
into the page and kept in the tab's ``sessionStorage``, and every call the page makes goes
through the API's own authentication. So, like ``/docs``, they are served without a key, and
while the model loads (``lifecycle.ALWAYS_OPEN``), where the page can say it is loading.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"
PAGES = {"/playground": "playground.html", "/usage": "usage.html"}
OPEN_PATHS = frozenset({"/", *PAGES})
# The pages handle a user's key and show model output: no script but our own files may run
# (no inline scripts, no other origin), and nothing may be fetched from anywhere else.
CSP = (
    "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load, so an upgraded server never runs with yesterday's scripts.
    "Cache-Control": "no-cache",
}


def is_open(path: str) -> bool:
    """A page or one of its files: served without a key and in every phase."""
    return path in OPEN_PATHS or path.startswith(STATIC_PATH + "/")


class _Static(StaticFiles):
    """Starlette's static files (which refuse paths outside the directory) with our headers."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
        status_code: int = 200,
    ) -> Response:  # fmt: skip
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Add ``/`` (a redirect), the pages and ``/static``; none of them in the API's schema."""

    async def root() -> Response:
        return RedirectResponse("/playground", status_code=307)

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    for path, name in PAGES.items():
        app.add_api_route(path, _page(name), methods=["GET"], include_in_schema=False)
    app.mount(STATIC_PATH, _Static(directory=STATIC_DIR), name="static")


def _page(name: str) -> Callable[[], Awaitable[Response]]:
    async def page() -> Response:
        return FileResponse(STATIC_DIR / name, media_type="text/html", headers=SECURITY_HEADERS)

    return page
