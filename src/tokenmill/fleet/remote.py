"""The ingress side of a model deployment: an engine client whose requests run on the
deployment's replicas, streamed back token by token through a Ray Serve handle."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)

from tokenmill.config import EngineConfig
from tokenmill.engine.client import QueueBound
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.fleet.wire import WireRequest
from tokenmill.protocol.errors import ENGINE_OVERLOADED, REPLICA_LOST
from tokenmill.runner.base import ModelInfo

log = logging.getLogger("tokenmill.fleet")
_LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


class RemoteEngine(QueueBound):
    """Implements ``EngineClient`` over a deployment handle. Ray Serve picks the replica
    (``fleet.router``); the queue bound here is the deployment's: ``capacity`` sequences
    per replica at most."""

    def __init__(
        self, handle: Any, info: ModelInfo, config: EngineConfig, max_replicas: int
    ) -> None:
        capacity = config.capacity
        super().__init__(None if capacity is None else capacity * max_replicas)
        self.handle = handle.options(stream=True)
        self.info, self.config = info, config
        self.requests = self.lost = 0

    async def generate(self, request: EngineRequest) -> AsyncGenerator[RequestOutput, None]:
        """Relay the replica's outputs. Closing this generator (the client left) cancels the
        Ray request, which aborts the sequence on its replica. A replica lost on the way ends
        the request with a ``REPLICA_LOST`` error: a 503, or an error event mid-stream."""
        self.requests += 1
        stream = self.handle.generate.remote(WireRequest.of(request))
        finished = False
        try:
            async for out in stream:
                finished = out.finished
                yield out
        except _LOST as e:
            self.lost += 1
            log.warning("request %s lost its replica: %s", request.request_id, e)
            yield _failed(request, "the replica serving this request stopped", REPLICA_LOST)
        except BackPressureError:
            yield _failed(request, "every replica's queue is full", ENGINE_OVERLOADED)
        except (RayServeException, RayError) as e:
            log.error("request %s failed on its replica: %r", request.request_id, e)
            yield _failed(request, "the replica failed", None)
        finally:
            if not finished:
                stream.cancel()

    def stats(self) -> dict[str, int]:
        return {"remote_requests": self.requests, "replica_losses": self.lost}

    def gauges(self) -> dict[str, float]:
        return {"requests_admitted": self.admitted}

    def health(self, stall_timeout: float) -> str | None:
        return None  # each replica's own health check runs in Ray Serve, which replaces it


def _failed(request: EngineRequest, message: str, code: str | None) -> RequestOutput:
    return RequestOutput(request.request_id, [], 0, True, error=message, error_code=code)
