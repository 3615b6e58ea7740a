"""The server's life: loading, ready, draining, stopped; the probes that report it and the
gate that refuses new work while the model loads or the server drains.

``/health`` is liveness: it fails (503) only when restarting the process would help: the
engine thread is dead or one step has run longer than ``stall_timeout``. ``/ready`` is
readiness: it also fails while the model loads and while the server drains, so a load
balancer stops sending traffic before the process goes away.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tokenmill.api import pages
from tokenmill.api.middleware import reject
from tokenmill.engine.client import EngineClient
from tokenmill.protocol.errors import SHUTDOWN_RETRY_AFTER, SHUTTING_DOWN, ServiceUnavailable

PROBES = frozenset({"/health", "/ready"})
# Served while loading too: they hold no data and need no model. So are the browser pages
# and their files (``pages.is_open``), which then show that the model is loading.
ALWAYS_OPEN = PROBES | {"/openapi.json", "/docs", "/docs/oauth2-redirect"}
LOADING_RETRY_AFTER = "5"


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    """Shared by the server (which moves it along) and the app (which reports and obeys it).
    Touched from the event loop only."""

    def __init__(self, stall_timeout: float = 60.0) -> None:
        self.phase = Phase.LOADING
        self.stall_timeout = stall_timeout
        self.engines: list[EngineClient] = []
        self.in_flight = 0  # requests inside the app, probes excepted
        self.started_at = time.monotonic()

    def ready(self, engines: list[EngineClient]) -> None:
        self.engines, self.phase = engines, Phase.READY

    def drain(self) -> None:
        if self.phase in (Phase.LOADING, Phase.READY):
            self.phase = Phase.DRAINING

    def problem(self) -> str | None:
        """Why the process should be restarted, if it should (no engines yet: still loading,
        or failed to load and exiting anyway)."""
        for engine in self.engines:
            problem = engine.health(self.stall_timeout)
            if problem is not None:
                return problem
        return None

    def liveness(self) -> tuple[int, dict[str, Any]]:
        problem = self.problem()
        if problem is not None:
            return 503, {"status": "unhealthy", "phase": self.phase.value, "reason": problem}
        return 200, {"status": "ok", "phase": self.phase.value}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        status, body = self.liveness()
        if status == 200 and self.phase is not Phase.READY:
            status, body = 503, {"status": "not ready", "phase": self.phase.value}
        return status, body


class AdmissionGate:
    """Answers the probes, refuses work the server cannot take now (503 with
    ``retry-after``), and counts the requests in flight so a drain knows when it is done."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, life = scope["path"], self.lifecycle
        if path in PROBES:
            status, body = life.liveness() if path == "/health" else life.readiness()
            await _json(send, status, body)
            return
        refusal = self._refusal(path, scope["method"])
        if refusal is not None:
            await reject(send, refusal)
            return
        life.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            life.in_flight -= 1

    def _refusal(self, path: str, method: str) -> ServiceUnavailable | None:
        phase = self.lifecycle.phase
        if phase is Phase.LOADING and not is_always_open(path):
            return ServiceUnavailable(
                "The model is still loading; retry shortly.",
                code="model_loading",
                headers={"retry-after": LOADING_RETRY_AFTER},
            )
        if phase in (Phase.DRAINING, Phase.STOPPED) and method == "POST":
            return ServiceUnavailable(
                "The server is shutting down; retry on another replica or later.",
                code=SHUTTING_DOWN,
                headers={"retry-after": SHUTDOWN_RETRY_AFTER},
            )
        return None


def is_always_open(path: str) -> bool:
    return path in ALWAYS_OPEN or pages.is_open(path)  # the pages' files: a whole prefix


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
