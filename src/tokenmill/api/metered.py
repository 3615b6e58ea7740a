"""A streamed (SSE) response that closes its request's meter however the stream ends.

The per-token path is kept short on purpose: on two cores every cycle the event loop spends
is taken from llama.cpp's threads. Each event is one ``await anext(body)`` and one ASGI
``send`` straight into the HTTP server: the response start goes through the middleware
chain (CORS headers, Starlette's bookkeeping of a started response), the body messages skip
Starlette's send wrappers, which only ever look at the start. No wrapper generator sits
between the serving layer's events and the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenmill.serving.common import RequestMeter
from tokenmill.tenancy.ledger import CANCELLED, ERROR, FINISHED

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
RAW_SEND = "tokenmill.raw_send"  # scope key: the HTTP server's own send (see RawSend)


class RawSend:
    """Outermost middleware: keeps the server's ``send`` in the scope for ``EventStream``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class EventStream(Response):
    """Sends ``body``'s events as they come; closes ``meter`` (finished, cancelled when the
    client left, error when the body raised) and the body (aborting its engine requests)."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[str, None], meter: RequestMeter) -> None:
        self.meter = meter
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **meter.headers()})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        outcome = CANCELLED
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            stream = self._events(scope.get(RAW_SEND, send))
            # Before ASGI 2.4 a send to a gone client may succeed silently: listen for the
            # disconnect instead (uvicorn speaks 2.4, and its send raises once the client left).
            if not _spec_at_least(spec, 2, 4):
                stream = _until_disconnect(receive, stream)
            done = await stream
            outcome = FINISHED if done else CANCELLED
        except OSError:
            pass  # the client left mid-stream (uvicorn's ClientDisconnected)
        except _BodyFailed:
            outcome = ERROR
            raise
        finally:
            self.meter.close(outcome)
            await self.body_iterator.aclose()

    async def _events(self, send: Send) -> bool:
        body = self.body_iterator
        while True:
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                break
            except Exception as e:
                raise _BodyFailed from e
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


class _BodyFailed(Exception):
    """The serving layer's generator raised (not the client's socket)."""


def _spec_at_least(spec: str, major: int, minor: int) -> bool:
    try:
        return tuple(map(int, spec.split(".")[:2])) >= (major, minor)
    except ValueError:
        return False


async def _until_disconnect(receive: Receive, work: Awaitable[bool]) -> bool:
    """Run ``work``; False if the client disconnects first (then ``work`` is cancelled)."""

    async def disconnected() -> None:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        return False
    return task.result()
