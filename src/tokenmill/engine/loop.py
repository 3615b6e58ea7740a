"""The engine thread: the one thread that owns the model runner, driving ``EngineCore``.

Requests and aborts arrive on a queue from any thread; the thread applies them, runs
``step()`` while there is work, and hands every output to the callback (sink) its request
came with. Nothing a request does stops it (the core isolates each request's work); an
exception in a step itself fails the requests in flight, and the loop goes on. If the thread
dies anyway, every waiting client gets an error and ``on_death`` is told why, so the process
can exit for a supervisor to restart it rather than hang every later request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenmill.config import EngineConfig
from tokenmill.engine.core import EngineCore
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.runner.base import ModelRunner

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]


@dataclass(frozen=True, slots=True)
class _Submit:
    request: EngineRequest
    sink: Sink


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


@dataclass(frozen=True, slots=True)
class _FailAll:
    """End every request in the engine with ``message`` (shutdown past its grace period)."""

    message: str
    code: str | None = None


class EngineLoop:
    """Runs the core's steps while there is work and sleeps on its inbox when there is none."""

    def __init__(
        self,
        runner: ModelRunner,
        config: EngineConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = EngineCore(runner, config, clock)
        self.clock = clock
        self._inbox: queue.SimpleQueue[_Submit | _Abort | _FailAll | None] = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._thread: threading.Thread | None = None
        # When the running step began (clock), None between steps: liveness probes compare
        # it with their bound to tell a stuck step from a slow one.
        self.step_started: float | None = None
        self.death: BaseException | None = None  # why the thread died, if it did
        self.on_death: Callable[[BaseException], None] | None = None

    # -- thread-safe entry points -----------------------------------------------------------

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        self._inbox.put(_Submit(request, sink))

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def fail_all(self, message: str, code: str | None = None) -> None:
        self._inbox.put(_FailAll(message, code))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def inbox_size(self) -> int:
        """Submits and aborts not yet taken by the thread (approximate, like any queue size)."""
        return self._inbox.qsize()

    @property
    def alive(self) -> bool:
        # ``death`` is set before the clients hear of it, while the thread still winds down.
        return self.death is None and self._thread is not None and self._thread.is_alive()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the current step has been running (0 between steps)."""
        started = self.step_started
        return 0.0 if started is None else (now or self.clock()) - started

    # -- the thread --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except BaseException as e:  # anything that ends the thread is fatal
            self.death = e
            log.critical("the engine thread died: %r", e, exc_info=e)
            for rid, sink in list(self._sinks.items()):
                _send(sink, RequestOutput(rid, [], 0, True, error="the engine stopped"))
            self._sinks.clear()
            if self.on_death is not None:
                self.on_death(e)

    def run_forever(self) -> None:
        core = self.core
        while self._drain_inbox(block=not core.has_work):
            if core.has_work:
                self.step_started = self.clock()
                try:
                    outputs = core.step()
                except Exception:  # not one request's fault: a bug in the engine itself
                    log.exception("engine step failed; failing the requests in flight")
                    outputs = core.fail_requests("internal engine error")
                finally:
                    self.step_started = None
                self._deliver(outputs)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued submits and aborts; False once asked to stop."""
        try:
            msg = self._inbox.get(block=block)
            while True:
                if msg is None:
                    return False
                self._apply(msg)
                msg = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _apply(self, msg: _Submit | _Abort | _FailAll) -> None:
        if isinstance(msg, _Submit):
            rid = msg.request.request_id
            if rid in self._sinks:  # an id already in use: answer the newcomer only
                _send(msg.sink, RequestOutput(rid, [], 0, True, error="duplicate request id"))
                return
            self._sinks[rid] = msg.sink
            self._deliver(self.core.add_request(msg.request))
        elif isinstance(msg, _Abort):
            self._deliver(self.core.abort_request(msg.request_id))
        else:
            self._deliver(self.core.fail_requests(msg.message, msg.code))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            rid = out.request_id
            sink = self._sinks.pop(rid, None) if out.finished else self._sinks.get(rid)
            if sink is not None:
                _send(sink, out)


def _send(sink: Sink, out: RequestOutput) -> None:
    try:
        sink(out)
    except Exception:  # the receiving side is gone (e.g. event loop closed)
        log.debug("dropping output for %s", out.request_id, exc_info=True)
