"""What the serving layer needs of an engine: the local one (``front.AsyncEngine``, a thread in
this process) and a remote one (``fleet.remote.RemoteEngine``, replicas behind Ray Serve)
both provide it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from tokenmill.config import EngineConfig
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.runner.base import ModelInfo


class EngineClient(Protocol):
    info: ModelInfo
    config: EngineConfig

    def generate(self, request: EngineRequest) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs until the last one; closing it early aborts the request."""
        ...

    def reserve(self, seqs: int) -> bool:
        """Count ``seqs`` sequences in, or False when the queue is full (a 503)."""
        ...

    def release(self, seqs: int) -> None: ...

    def stats(self) -> dict[str, int]:
        """Lifetime counters for ``/metrics``."""
        ...

    def gauges(self) -> dict[str, float]:
        """Current levels for ``/metrics``."""
        ...

    def health(self, stall_timeout: float) -> str | None:
        """Why the engine cannot serve, or None when it is fine."""
        ...


class QueueBound:
    """Sequences admitted and not yet finished, bounded so that overload becomes a quick 503
    instead of an ever longer wait: the engine clients' ``reserve`` and ``release``. Touched
    from the event loop only (no lock needed there)."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity  # None: no bound
        self.admitted = 0

    def reserve(self, seqs: int) -> bool:
        """Count ``seqs`` sequences in, or False when the queue is full; every True must be
        matched by ``release``."""
        full = self.capacity is not None and self.admitted + seqs > self.capacity
        if full and self.admitted > 0:  # alone, even an oversized request may run
            return False
        self.admitted += seqs
        return True

    def release(self, seqs: int) -> None:
        self.admitted -= seqs
