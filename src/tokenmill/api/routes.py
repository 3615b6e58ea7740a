"""The HTTP routes: parse, authenticate, hand to serving, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from tokenmill.api.auth import StaticKeys
from tokenmill.api.errors import from_validation_error
from tokenmill.protocol.errors import BadRequest
from tokenmill.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationFields,
)
from tokenmill.serving.chat import create_chat_completion
from tokenmill.serving.common import ServingContext
from tokenmill.serving.completions import create_completion

log = logging.getLogger("tokenmill.requests")
M = TypeVar("M", bound=BaseModel)
G = TypeVar("G", bound=GenerationFields)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def parse_body(request: Request, model: type[M]) -> M:
    """JSON body -> validated request; ``extra_body`` sent literally is merged in."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(
            f"We could not parse the JSON body of your request: {e}", None, code="invalid_json"
        ) from e
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object", None, code="invalid_json")
    extra = data.pop("extra_body", None)
    if isinstance(extra, dict):
        data.update(extra)
    elif extra is not None:
        raise BadRequest("extra_body must be an object", "extra_body")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from e


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client goes away first; then cancel it (aborting its engine
    requests) instead of computing an answer nobody will read."""
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    await asyncio.gather(task, return_exceptions=True)
    return Response(status_code=499)


def make_router(ctx: ServingContext, keys: StaticKeys) -> APIRouter:
    router = APIRouter()

    def respond(result: dict[str, Any] | AsyncIterator[str] | Response) -> Response:
        if isinstance(result, Response):
            return result
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)

    def log_request(request: Request, kind: str, model: str) -> None:
        project = request.query_params.get("ai_project_id")
        log.info("%s model=%s project=%s", kind, model, project or "-")

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Engine counters in Prometheus' text format."""
        keys.check(request)
        lines = [
            f"# TYPE tokenmill_{name}_total counter\ntokenmill_{name}_total {value}"
            for name, value in ctx.engine.stats().items()
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        keys.check(request)
        return ctx.models.list()

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        keys.check(request)
        return ctx.models.card(ctx.models.resolve(model_id, param=None))

    async def generate(
        request: Request,
        model: type[G],
        kind: str,
        create: Callable[[G, ServingContext], Awaitable[dict[str, Any] | AsyncIterator[str]]],
    ) -> Response:
        """Authenticate, validate, then stream, or answer unless the client leaves first."""
        keys.check(request)
        req = await parse_body(request, model)
        log_request(request, kind, req.model)
        if req.stream:
            return respond(await create(req, ctx))
        return respond(await until_disconnect(request, create(req, ctx)))

    @router.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest, "chat", create_chat_completion)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest, "completion", create_completion)

    return router
