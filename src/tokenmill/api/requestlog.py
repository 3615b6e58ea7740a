"""Request ids and the one log line per request.

Every request gets an id: the client's ``x-request-id`` when it sent a usable one (so a
gateway's id follows the request through), else a new one; either way the response carries
it back in ``x-request-id``. When the request ends, one line goes to the
``tokenmill.access`` logger with the method, path, status, duration and id, plus what the
route learned (model, project, key id, tier, usage), never the prompt or the output.
``logs.py`` writes it as text or as one JSON object (``--log-format json``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenmill.api.lifecycle import PROBES
from tokenmill.metrics import Metrics

LOG_FIELDS = "tokenmill.log"  # scope key: fields the route adds to the request's line
HEADER = b"x-request-id"
# Ids echoed into headers and logs: printable, no spaces or separators a log parser or an
# HTTP client could trip on.
_USABLE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
log = logging.getLogger("tokenmill.access")


def request_fields(scope: Scope) -> dict[str, Any]:
    """The dict of fields this request's log line will carry (empty outside the middleware)."""
    fields: dict[str, Any] = scope.setdefault(LOG_FIELDS, {})
    return fields


class RequestLog:
    """Outer middleware: the request id in and out, and the line at the end. Probes get ids
    but no line (load balancers call them every few seconds)."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _client_id(scope) or "req_" + uuid.uuid4().hex
        fields = request_fields(scope)
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (HEADER, rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None:
                self._count(scope, status or 500, fields)
            if scope["path"] not in PROBES:
                line = {
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status or 500,  # nothing sent: the server failed
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    **fields,
                }
                log.info("%s %s %s", scope["method"], scope["path"], line["status"],
                         extra={"fields": line})  # fmt: skip

    def _count(self, scope: Scope, status: int, fields: dict[str, Any]) -> None:
        """One answer in ``tokenmill_http_requests_total``, by the route's template (a path
        with ids in it would make a series per id)."""
        assert self.metrics is not None
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        model = fields.get("served_model") or ""
        self.metrics.http.labels(model, scope["method"], route, str(status)).inc()


def _client_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == HEADER:
            text = value.decode("latin-1").strip()
            return text if _USABLE.fullmatch(text) else None
    return None
