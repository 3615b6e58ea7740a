"""The asyncio side of the engine: submit a request, iterate its outputs, abort it.

Outputs cross from the engine thread through one mailbox per event loop: a step's outputs
for every request wake the event loop once (``call_soon_threadsafe`` writes to a pipe each
time it is called), not once per request. A stream whose client reads slower than the engine
steps finds several outputs waiting and takes them as one (``RequestOutput.merge``): one SSE
event of several tokens instead of a backlog of one-token events.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator

from tokenmill.config import EngineConfig
from tokenmill.engine.client import QueueBound
from tokenmill.engine.loop import EngineLoop
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.runner.base import ModelRunner


class _Mailbox:
    """Outputs posted by the engine thread, handed to their requests' queues on the event
    loop in one callback per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._mail: deque[tuple[asyncio.Queue[RequestOutput], RequestOutput]] = deque()
        self._scheduled = False

    def post(self, queue: asyncio.Queue[RequestOutput], out: RequestOutput) -> None:
        """From the engine thread."""
        self._mail.append((queue, out))
        # Read without a lock: the flush clears the flag before draining, so an output
        # appended while a flush is pending is either drained by it or schedules another.
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        mail = self._mail
        while mail:
            queue, out = mail.popleft()
            queue.put_nowait(out)


class AsyncEngine(QueueBound):
    """Wraps the engine thread; safe to use from any number of concurrent HTTP handlers."""

    def __init__(self, runner: ModelRunner, config: EngineConfig) -> None:
        super().__init__(config.capacity)
        self.runner = runner
        self.info = runner.info
        self.config = config
        self.loop = EngineLoop(runner, config)
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}

    def start(self) -> None:
        self.loop.start()

    def stats(self) -> dict[str, int]:
        """Lifetime counters, read without locking (each is one int the engine replaces)."""
        core = self.loop.core
        return {
            "engine_steps": core.steps,
            "preemptions": core.scheduler.num_preemptions,
            "host_cache_saves": core.scheduler.host.saves,
            "host_cache_restores": core.scheduler.host.restores,
            "spec_draft_tokens": core.spec_proposed,
            "spec_accepted_tokens": core.spec_accepted,
            "request_failures": core.request_failures,
        }

    def gauges(self) -> dict[str, float]:
        """Current levels, read without locking like ``stats`` (a list is copied in one step
        under the GIL; the counts may be a step old, which a scrape does not mind)."""
        sched = self.loop.core.scheduler
        running = {s.group.request_id for s in tuple(sched.running)}
        waiting = {s.group.request_id for s in tuple(sched.waiting)} - running
        return {
            "requests_running": len(running),
            # Submitted but not yet taken by the engine thread is waiting too.
            "requests_waiting": len(waiting) + self.loop.inbox_size,
            "kv_cache_usage_ratio": sched.used_cells / max(sched.kv_cells, 1),
            "host_cache_bytes": sched.host.tokens * self.info.kv_bytes_per_token,
        }

    def stop(self) -> None:
        self.loop.stop()

    def fail_all(self, message: str, code: str | None = None) -> None:
        """End every request in the engine with an error (each stream gets its error event)."""
        self.loop.fail_all(message, code)

    def health(self, stall_timeout: float) -> str | None:
        """Why the engine cannot serve (its thread died, or a step has run longer than
        ``stall_timeout`` seconds), or None when it is fine."""
        loop = self.loop
        if not loop.alive:
            return f"the engine thread is not running ({loop.death!r})"
        stalled = loop.stalled_for()
        if stalled > stall_timeout:
            return f"an engine step has been running for {stalled:.1f}s"
        return None

    async def generate(self, request: EngineRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yield the request's outputs until the last one.

        If the consumer stops early (client gone, task cancelled) the request is aborted and
        its KV freed at the engine's next step.
        """
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        aio_loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(aio_loop)
        if mailbox is None:
            mailbox = self._mailboxes[aio_loop] = _Mailbox(aio_loop)
        post = mailbox.post
        self.loop.submit(request, lambda out: post(queue, out))
        finished = False
        try:
            while not finished:
                out = await queue.get()
                while not queue.empty():  # the consumer lagged: one output for all of them
                    out.merge(queue.get_nowait())
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.loop.abort(request.request_id)
