"""The OpenAPI description served at ``/openapi.json`` (and rendered at ``/docs``).

The generation routes read the raw ``Request`` (``parse_body`` merges ``extra_body`` and
shapes errors the OpenAI way), so FastAPI cannot see their bodies. This module adds them:
the pydantic request models' JSON schemas become components, referenced by the operations,
so clients and fuzzers (schemathesis, in tests/e2e/test_fuzz.py) see the real contract.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tokenmill.protocol.requests import ChatCompletionRequest, CompletionRequest

REF = "#/components/schemas/{model}"
BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
OPEN = ("/health", "/ready")  # everything else needs an API key


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx: OpenAI's error shape."""

    error: ErrorDetail


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that describes the hand-parsed request bodies."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    models = [(m, "validation") for m in BODIES.values()] + [(ErrorResponse, "serialization")]
    names, defs = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    error = {"content": {"application/json": {"schema": names[(ErrorResponse, "serialization")]}}}
    for path, methods in schema.get("paths", {}).items():
        for operation in methods.values():
            if path not in OPEN:
                operation["security"] = [{"apiKey": []}]
            operation.setdefault("responses", {}).pop("422", None)  # we answer 400, not 422
            operation["responses"]["default"] = {"description": "An error", **error}
    for unused in ("HTTPValidationError", "ValidationError"):  # only the 422s named them
        components["schemas"].pop(unused, None)
    for path, model in BODIES.items():
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": names[(model, "validation")]}},
        }
    return schema
