"""The HTTP routes: parse, authenticate, hand to serving, shape the response. Nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from tokenmill.api import jsonbody
from tokenmill.api.errors import from_structured, from_validation_error
from tokenmill.api.metered import EventStream
from tokenmill.api.requestlog import request_fields
from tokenmill.metrics import CONTENT_TYPE, Metrics
from tokenmill.protocol.errors import APIError, BadRequest, Forbidden
from tokenmill.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    FaultRequest,
    GenerationFields,
)
from tokenmill.serving.chat import create_chat_completion
from tokenmill.serving.common import RequestMeter, ServingContext
from tokenmill.serving.completions import create_completion
from tokenmill.serving.models import ServedModels
from tokenmill.structured.errors import StructuredError
from tokenmill.tenancy.ledger import CANCELLED, ERROR, FINISHED
from tokenmill.tenancy.service import Principal, Tenancy

log = logging.getLogger("tokenmill.requests")
M = TypeVar("M", bound=BaseModel)
G = TypeVar("G", bound=GenerationFields)
Create = Callable[
    [G, ServingContext, RequestMeter, str], Awaitable[dict[str, Any] | AsyncGenerator[str, None]]
]
USAGE_GROUPS = ("model", "day", "key", "tier", "user", "status")


async def parse_body(request: Request, model: type[M]) -> M:
    """JSON body -> validated request; ``extra_body`` sent literally is merged in."""
    return validate_body(jsonbody.load_object(await request.body()), model)


def validate_body(body: dict[str, Any], model: type[M]) -> M:
    """A parsed body (an HTTP request's or a batch line's) -> validated request, with
    ``extra_body`` sent literally merged in; a 400 naming the parameter otherwise."""
    data = dict(body)
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


async def authenticate(tenancy: Tenancy, request: Request) -> Principal:
    """The caller of ``request`` (its bearer key) and the project it acts for."""
    return await tenancy.authenticate(
        request.headers.get("authorization"), request.query_params.get("ai_project_id")
    )


def make_router(
    served: ServedModels,
    tenancy: Tenancy,
    metrics: Metrics,
    metrics_public: bool = False,
    log_content: bool = False,
) -> APIRouter:
    routes = _Routes(served, tenancy, metrics, metrics_public, log_content)
    router = APIRouter()
    router.add_api_route("/metrics", routes.metrics, methods=["GET"])
    if any(ctx.faults is not None for ctx in served):
        router.add_api_route("/internal/faults", routes.arm_fault, methods=["POST"])
    router.add_api_route("/v1/models", routes.list_models, methods=["GET"])
    router.add_api_route("/v1/models/{model_id:path}", routes.get_model, methods=["GET"])
    router.add_api_route("/v1/chat/completions", routes.chat, methods=["POST"])
    router.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    router.add_api_route("/v1/usage", routes.usage, methods=["GET"])
    return router


class _Routes:
    """The endpoints, over the served models and one tenancy."""

    def __init__(
        self,
        served: ServedModels,
        tenancy: Tenancy,
        metrics: Metrics,
        metrics_public: bool,
        log_content: bool,
    ) -> None:
        self.served, self.tenancy = served, tenancy
        self.prom, self.metrics_public = metrics, metrics_public
        self.log_content = log_content

    async def authenticate(self, request: Request) -> Principal:
        return await authenticate(self.tenancy, request)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format (``tokenmill.metrics``); any valid key may read it, and
        anyone with ``--metrics-public`` (for a scraper inside a trusted network)."""
        if not self.metrics_public:
            await self.authenticate(request)
        return Response(self.prom.render(), media_type=CONTENT_TYPE)

    async def arm_fault(self, request: Request) -> dict[str, Any]:
        """Arm a runner fault (tests only: the route exists with --fault-injection)."""
        principal = await self.authenticate(request)
        if principal.caller.projects is not None:
            raise Forbidden("Only admin keys may inject faults.")
        req = await parse_body(request, FaultRequest)
        faults = next(ctx.faults for ctx in self.served if ctx.faults is not None)
        faults.arm(req.kind, req.count, req.seconds, req.skip)
        return {"armed": req.model_dump(), "fired": faults.fired}

    async def list_models(self, request: Request) -> dict[str, Any]:
        await self.authenticate(request)
        return self.served.list()

    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        await self.authenticate(request)
        return self.served.card(model_id)

    async def chat(self, request: Request) -> Response:
        return await self.generate(request, ChatCompletionRequest, "chat", create_chat_completion)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, CompletionRequest, "completion", create_completion)

    async def generate(
        self, request: Request, model: type[G], kind: str, create: Create[G]
    ) -> Response:
        """Authenticate, validate, admit, then stream, or answer unless the client leaves
        first; the request's meter is closed on every path."""
        principal = await self.authenticate(request)
        req = await parse_body(request, model)
        ctx, served_as = self.served.resolve(req.model)  # 404 before anything is reserved
        served_model = ctx.models.model_id
        fields = request_fields(request.scope)
        fields.update(
            endpoint=kind, model=req.model, served_model=served_model,
            project=principal.project, key=principal.caller.key_id,
        )  # fmt: skip
        usage = self.tenancy.meter(
            principal, served_model, req.model, req.service_tier, kind, req.user, fields
        )
        content = None
        if self.log_content:  # the users' data: only when the operator asked for it
            fields["prompt"] = req.model_dump(
                mode="json", include={"messages", "prompt"}, exclude_unset=True
            )
            content = fields
        meter = RequestMeter(usage, ctx.engine, self.prom.request(served_model), content)
        try:
            try:
                if req.stream:
                    body = await create(req, ctx, meter, served_as)
                    assert not isinstance(body, dict)
                    return EventStream(body, meter)  # closes the meter when the stream ends
                result = await until_disconnect(request, create(req, ctx, meter, served_as))
            except StructuredError as e:
                raise from_structured(e) from e
        except APIError as e:
            meter.close(ERROR)
            e.headers = {**meter.headers(), **e.headers}
            raise
        except asyncio.CancelledError:
            meter.close(CANCELLED)
            raise
        except BaseException:
            meter.close(ERROR)
            raise
        if isinstance(result, Response):  # the client left
            meter.close(CANCELLED)
            return result
        meter.close(FINISHED)
        return JSONResponse(result, headers=meter.headers())

    async def usage(self, request: Request) -> dict[str, Any]:
        """Usage of the caller's project: totals over a time range, grouped as asked."""
        principal = await self.authenticate(request)
        q = request.query_params
        start, end = (
            _time_param(q.get("start_time"), "start_time"),
            _time_param(q.get("end_time"), "end_time"),
        )
        groups = [g.strip() for part in q.getlist("group_by") for g in part.split(",")]
        groups = list(dict.fromkeys(g for g in groups if g))
        for g in groups:
            if g not in USAGE_GROUPS:
                raise BadRequest(
                    f"Invalid group_by {g!r}: use any of {', '.join(USAGE_GROUPS)}", "group_by"
                )
        ledger = self.tenancy.ledger
        await ledger.flush()  # see every request that has ended so far
        data = await asyncio.to_thread(ledger.summary, principal.project, start, end, groups)
        return {
            "object": "list",
            "project_id": principal.project,
            "start_time": start,
            "end_time": end,
            "group_by": groups,
            "data": data,
        }


def _time_param(value: str | None, name: str) -> float | None:
    """UNIX seconds, as OpenAI's usage API takes them."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a UNIX timestamp in seconds", name) from None
