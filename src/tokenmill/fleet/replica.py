"""One engine replica of a model deployment: the model loaded in llama.cpp, its engine thread,
and a streaming ``generate`` that Ray Serve calls through deployment handles."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator

from tokenmill.config import ModelConfig, ServeConfig
from tokenmill.engine.front import AsyncEngine
from tokenmill.engine.messages import RequestOutput
from tokenmill.fleet.wire import WireRequest
from tokenmill.runner.base import ModelInfo
from tokenmill.server import EXIT_ENGINE_DIED, load_runner
from tokenmill.structured import GrammarCompiler, make_tokenizer

log = logging.getLogger("tokenmill.fleet")


class EngineReplica:
    """Ray Serve runs one per replica (``deploy.py`` makes it a deployment)."""

    def __init__(self, config: ServeConfig, model: ModelConfig) -> None:
        runner, _ = load_runner(config, model)
        self.info = runner.info
        self.stall_timeout = config.stall_timeout
        self.grammars = GrammarCompiler(
            make_tokenizer(self.info, lambda s: runner.tokenize(s, False, False))
        )
        self.engine = AsyncEngine(runner, model.engine)
        # A dead engine thread cannot recover: end the process, and Ray Serve starts a
        # replacement replica (its clients get an error from their handles).
        self.engine.loop.on_death = lambda e: os._exit(EXIT_ENGINE_DIED)
        self.engine.start()
        log.info("replica of %s ready (pid %d)", model.model_id, os.getpid())

    def model_info(self) -> ModelInfo:
        return self.info

    def stats(self) -> dict[str, float]:
        return {**self.engine.stats(), **self.engine.gauges()}

    async def generate(self, wire: WireRequest) -> AsyncGenerator[RequestOutput, None]:
        """Stream the request's outputs; a cancelled stream (the client left) aborts it."""
        try:
            request = wire.to_engine(self.grammars)
        except Exception as e:  # the ingress compiled it already: only a bug gets here
            yield RequestOutput(wire.request_id, [], 0, True, error=f"grammar: {e}")
            return
        async for out in self.engine.generate(request):
            yield out

    def check_health(self) -> None:
        """Ray Serve's health check: raising marks the replica unhealthy (it is replaced)."""
        problem = self.engine.health(self.stall_timeout)
        if problem is not None:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
