"""The ingress deployment: the whole HTTP API (auth, tenancy, validation, templates,
tokenization, grammars) in front of the model deployments, reached through their handles.

Each ingress replica holds each model's vocabulary (llama.cpp's ``vocab_only``: no weights)
to tokenize and compile grammars, and the model's facts, asked once of a replica."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from tokenmill.api.app import create_app
from tokenmill.config import ServeConfig
from tokenmill.fleet.remote import RemoteEngine
from tokenmill.serving.models import ServedModels
from tokenmill.tenancy.service import Tenancy

log = logging.getLogger("tokenmill.fleet")


class Ingress:
    """Ray Serve runs one per ingress replica (``deploy.py`` wraps it with ``serve.ingress``);
    ``handles`` maps each model id to its deployment's handle."""

    def __init__(self, config: ServeConfig, handles: dict[str, Any]) -> None:
        self.config, self.handles = config, handles
        self.tenancy: Tenancy | None = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        from tokenmill import logs
        from tokenmill.runner import kernels

        # Ray's worker keeps its root logger; ours get the server's format.
        logs.configure(self.config.log_level, self.config.log_format, "tokenmill")
        kernels.select(self.config.kernels)  # before llama_cpp is imported
        from tokenmill.runner.llama_cpp import LlamaVocab
        from tokenmill.server import build_tenancy, serving_context

        contexts = []
        for model in self.config.models:
            handle = self.handles[model.model_id]
            info = await handle.model_info.remote()
            vocab = await asyncio.to_thread(LlamaVocab, model.path)
            most = model.autoscaling.max_replicas if model.autoscaling else model.replicas
            engine = RemoteEngine(handle, info, model.engine, most)
            contexts.append(serving_context(model, engine, info, vocab))
        # The driver recovered the ledger before deploying: a replica starting later must not
        # mark the rows of requests other replicas are serving as interrupted.
        tenancy = self.tenancy = await asyncio.to_thread(build_tenancy, self.config, False)
        tenancy.ledger.start()
        c = self.config
        app = create_app(
            ServedModels(contexts), tenancy, c.max_body_bytes, c.max_header_bytes, c.cors_origins,
            metrics_public=c.metrics_public, log_content=c.log_content,
            max_file_bytes=c.max_file_bytes,
        )  # fmt: skip
        log.info("ingress ready for %s", ", ".join(m.model_id for m in c.models))
        return app

    def __del__(self) -> None:
        if self.tenancy is not None:  # write what is queued: rows end where they stand
            self.tenancy.ledger.stop()
