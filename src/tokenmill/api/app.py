"""Build the ASGI app; the API routes join once the model has loaded."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from tokenmill import __version__
from tokenmill.api import errors, openapi, pages
from tokenmill.api.batch_routes import add_batch_routes
from tokenmill.api.lifecycle import AdmissionGate, Lifecycle
from tokenmill.api.metered import RawSend
from tokenmill.api.middleware import BodySizeLimit, HeaderSizeLimit
from tokenmill.api.requestlog import RequestLog
from tokenmill.api.routes import make_router
from tokenmill.batches.worker import BatchWorker
from tokenmill.metrics import Metrics
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ServedModels
from tokenmill.tenancy.service import Tenancy


def create_app(
    ctx: ServingContext | ServedModels | None,
    tenancy: Tenancy | None,
    max_body_bytes: int,
    max_header_bytes: int = 16 * 1024,
    cors_origins: tuple[str, ...] = (),
    lifecycle: Lifecycle | None = None,
    metrics_public: bool = False,
    log_content: bool = False,
    max_file_bytes: int = 100 * 1024 * 1024,
) -> FastAPI:
    """The app, with its middleware (which cannot be added once it serves). Without ``ctx``
    it starts out loading: only the probes, the schema and the browser pages answer
    until ``attach``."""
    # The schema and its docs page are served without a key, as vLLM does: they describe the
    # API and hold no data (no keys, projects, models or usage).
    app = FastAPI(
        title="tokenmill",
        version=__version__,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    errors.install(app)
    openapi.install(app)
    pages.install(app)  # the playground and usage pages: no key, no data, open while loading
    life = lifecycle or Lifecycle()
    app.state.lifecycle = life
    app.state.metrics = Metrics()
    app.state.metrics_public = metrics_public
    app.state.log_content = log_content
    app.add_middleware(
        BodySizeLimit, max_bytes=max_body_bytes, larger={"/v1/files": max_file_bytes}
    )
    # Inside CORS, so that browsers can read its 503s.
    app.add_middleware(AdmissionGate, lifecycle=life)
    if cors_origins:  # off unless asked: browsers must not call with a user's key by default
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HeaderSizeLimit, max_bytes=max_header_bytes)  # first check
    # Ids, log lines and HTTP counts for every answer, 431s included.
    app.add_middleware(RequestLog, metrics=app.state.metrics)
    app.add_middleware(RawSend)  # outermost: the server's own send, for streamed events
    if ctx is not None and tenancy is not None:
        attach(app, ctx, tenancy)
    return app


def attach(app: FastAPI, ctx: ServingContext | ServedModels, tenancy: Tenancy) -> None:
    """Add the API routes (the models are loaded) and mark the server ready."""
    served = ctx if isinstance(ctx, ServedModels) else ServedModels([ctx])
    metrics: Metrics = app.state.metrics
    metrics.watch(served)
    router = make_router(served, tenancy, metrics, app.state.metrics_public, app.state.log_content)
    if tenancy.batches is not None:
        worker = BatchWorker(
            tenancy.batches, served, tenancy, metrics,
            concurrency=max(c.engine.config.max_num_seqs for c in served),
        )  # fmt: skip
        app.state.batch_worker = worker
        add_batch_routes(router, tenancy, tenancy.batches, worker)
        with contextlib.suppress(RuntimeError):  # no loop yet: the first batch call starts it
            asyncio.get_running_loop()
            worker.ensure_running()  # resumes what a restart cut off
    app.include_router(router)
    app.openapi_schema = None  # a schema built while loading lacks these routes
    app.state.lifecycle.ready([c.engine for c in served])
