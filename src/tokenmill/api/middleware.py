"""ASGI middleware: request header and body size limits (before anything reads them)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenmill.protocol.errors import APIError, HeadersTooLarge, PayloadTooLarge


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with a 413, by header or by counting what arrives;
    the paths in ``larger`` (file uploads) have their own limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await reject(send, PayloadTooLarge(_message(limit)))
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(_message(limit))
            return message

        await self.app(scope, counting_receive, send)


def _message(limit: int) -> str:
    return f"Request body too large: the limit is {limit} bytes"


class HeaderSizeLimit:
    """Refuse requests whose headers add up to more than ``max_bytes`` with a 431 (the HTTP
    server's own limit is set higher and only guards its buffer)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if size > self.max_bytes:
                msg = f"Request headers too large: the limit is {self.max_bytes} bytes"
                await reject(send, HeadersTooLarge(msg))
                return
        await self.app(scope, receive, send)


async def reject(send: Send, err: APIError) -> None:
    """Answer with ``err`` and close the connection, without reading the request body."""
    await send(
        {
            "type": "http.response.start",
            "status": err.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(err.body()).encode()})
