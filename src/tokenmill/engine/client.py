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

    def gauges(self) -> dict[str, int]:
        """Current levels for ``/metrics``."""
        ...

    def health(self, stall_timeout: float) -> str | None:
        """Why the engine cannot serve, or None when it is fine."""
        ...
