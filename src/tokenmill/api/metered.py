"""A streamed (SSE) response that closes its request's meter however the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenmill.serving.common import RequestMeter
from tokenmill.tenancy.ledger import CANCELLED, ERROR, FINISHED

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class MeteredStream(StreamingResponse):
    """Starlette stops iterating a stream whose client left without closing the iterator;
    this response's ``finally`` closes both the meter and the iterator, at once."""

    def __init__(self, body: AsyncIterator[str], meter: RequestMeter) -> None:
        self.meter = meter
        self.outcome = CANCELLED  # until the body runs to its end
        self._body = body
        super().__init__(
            self._watch(body),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **meter.headers()},
        )

    async def _watch(self, body: AsyncIterator[str]) -> AsyncGenerator[str, None]:
        try:
            async for chunk in body:
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except BaseException:
            self.outcome = ERROR
            raise
        self.outcome = FINISHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.meter.close(self.outcome)
            # Ends the engine requests of a stream left half-read (client gone).
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
