"""Build the ASGI app around a running engine."""

from __future__ import annotations

from fastapi import FastAPI

from tokenmill import __version__
from tokenmill.api import errors
from tokenmill.api.auth import StaticKeys
from tokenmill.api.middleware import BodySizeLimit
from tokenmill.api.routes import make_router
from tokenmill.serving.common import ServingContext


def create_app(ctx: ServingContext, keys: StaticKeys, max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="tokenmill", version=__version__, docs_url=None, redoc_url=None)
    errors.install(app)
    app.include_router(make_router(ctx, keys))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app
