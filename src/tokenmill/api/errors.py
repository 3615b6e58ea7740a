"""Map every failure the HTTP layer can see to an OpenAI-shaped error response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenmill.protocol.errors import (
    APIError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from tokenmill.protocol.requests import UnsupportedField
from tokenmill.structured.errors import CompilerBusy, StructuredError

log = logging.getLogger(__name__)

# Type tags pydantic puts in error locations for union members; not parameter names.
_UNION_TAGS = ("str", "int", "float", "bool", "list", "dict", "function", "literal", "nullable")


def from_structured(exc: StructuredError) -> APIError:
    """Structured output's own errors at the edge: a bad constraint is the client's 400, a
    busy compiler the server's 503."""
    if isinstance(exc, CompilerBusy):
        return ServiceUnavailable(exc.message, exc.param, headers={"retry-after": "1"})
    return BadRequest(exc.message, exc.param)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


def from_validation_error(exc: ValidationError) -> BadRequest:
    """The first problem, as a 400 whose ``param`` names the offending field."""
    first: dict[str, Any] = dict(exc.errors()[0])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, UnsupportedField):
        return BadRequest(cause.message, cause.param, code="unsupported_parameter")
    param = _param_path(first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return BadRequest(
            f"Missing required parameter: '{param}'.", param, code="missing_required_parameter"
        )
    return BadRequest(f"Invalid value for '{param}': {msg}", param)


def _param_path(loc: tuple[Any, ...]) -> str | None:
    if loc and loc[0] == "body":
        loc = loc[1:]
    if not loc:
        return None
    path = str(loc[0])
    for part in loc[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(_UNION_TAGS) or "[" in part:
            continue
        else:
            path += f".{part}"
    return path


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StructuredError)
    async def _structured(_: Request, exc: StructuredError) -> JSONResponse:
        return error_response(from_structured(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = _param_path(tuple(first.get("loc", ())))
        return error_response(BadRequest(f"Invalid value for '{param}': {first['msg']}", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFound("Unknown route"))
        if exc.status_code == 405:
            return error_response(MethodNotAllowed("Method not allowed for this route"))
        err = APIError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError("The server had an error processing your request."))
