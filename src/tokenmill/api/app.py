"""Build the ASGI app around a running engine."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from tokenmill import __version__
from tokenmill.api import errors, openapi
from tokenmill.api.middleware import BodySizeLimit, HeaderSizeLimit
from tokenmill.api.routes import make_router
from tokenmill.serving.common import ServingContext
from tokenmill.tenancy.service import Tenancy


def create_app(
    ctx: ServingContext,
    tenancy: Tenancy,
    max_body_bytes: int,
    max_header_bytes: int = 16 * 1024,
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
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
    app.include_router(make_router(ctx, tenancy))
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if cors_origins:  # off unless asked: browsers must not call with a user's key by default
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HeaderSizeLimit, max_bytes=max_header_bytes)  # outermost: first check
    return app
