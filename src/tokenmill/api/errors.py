"""Map every failure the HTTP layer can see to an OpenAI-shaped error response."""

from __future__ import annotations

import logging
import re
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

_INSTANCE_OF = re.compile(r" or instance of \w+")
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
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors()]
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, UnsupportedField):
        return BadRequest(cause.message, cause.param, code="unsupported_parameter")
    if first.get("type") == "missing":
        param = _param_path(first.get("loc", ()))
        return BadRequest(
            f"Missing required parameter: '{param}'.", param, code="missing_required_parameter"
        )
    param, msg = _union_aware(errors)
    return BadRequest(f"Invalid value for '{param}': {msg}", param)


def _union_aware(errors: list[dict[str, Any]]) -> tuple[str | None, str]:
    """Path and message of the first error. For a union field (``stop``: a string or a list
    of strings) pydantic reports one error per member: name the member that got furthest
    into the value (``content[0].text``), and when several tie, say what each one wanted."""
    loc = tuple(errors[0].get("loc", ()))
    tag = next((i for i, part in enumerate(loc) if _is_tag(part)), None)
    if tag is None:
        return _param_path(loc), _public(str(errors[0].get("msg", "invalid value")))
    members = [e for e in errors if tuple(e["loc"])[:tag] == loc[:tag] and len(e["loc"]) > tag]
    depth = max(len(_parts(tuple(e["loc"]))) for e in members)
    deepest = [e for e in members if len(_parts(tuple(e["loc"]))) == depth]
    msgs = list(dict.fromkeys(_public(str(e.get("msg", "invalid value"))) for e in deepest))
    lead = "Input should be "
    if len(msgs) > 1 and all(m.startswith(lead) for m in msgs):
        msgs = [lead + " or ".join(m.removeprefix(lead) for m in msgs)]
    return _param_path(tuple(deepest[0]["loc"])), "; ".join(msgs)


def _public(msg: str) -> str:
    """Pydantic's message without our class names ("a valid dictionary or instance of
    TextPart" is "a valid object" to a client, who sends JSON)."""
    return _INSTANCE_OF.sub("", msg).replace("a valid dictionary", "a valid object")


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(_UNION_TAGS) or "[" in part)


def _parts(loc: tuple[Any, ...]) -> list[Any]:
    """The location without ``body`` in front and without union member tags."""
    if loc and loc[0] == "body":
        loc = loc[1:]
    return [loc[0], *(p for p in loc[1:] if not _is_tag(p))] if loc else []


def _param_path(loc: tuple[Any, ...]) -> str | None:
    parts = _parts(loc)
    if not parts:
        return None
    path = str(parts[0])
    for part in parts[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
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
        if 400 <= exc.status_code < 500:  # e.g. Starlette's own 400 for a broken multipart body
            err: APIError = BadRequest(str(exc.detail), code="invalid_request")
        else:
            err = APIError(str(exc.detail))
        err.status_code = exc.status_code
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError("The server had an error processing your request."))
