"""API errors: one class per kind, each with its status code and OpenAI-shaped body."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client should see: ``{"error": {"message", "type", "param", "code"}}``."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class ContextLengthExceeded(BadRequest):
    default_code = "context_length_exceeded"


class Unauthorized(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(APIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(APIError):
    """The object is not in a state that allows this (e.g. cancelling a finished batch)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


SHUTTING_DOWN = "shutting_down"  # the error code of requests refused or ended by a shutdown
SHUTDOWN_RETRY_AFTER = "5"
# The engine replica running a request was lost (Ray Serve replaces it): retry.
REPLICA_LOST = "replica_unavailable"
ENGINE_OVERLOADED = "engine_overloaded"


class ServiceUnavailable(APIError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class Overloaded(ServiceUnavailable):
    """The engine's waiting queue is full: the server's problem, so 503 and not 429."""

    default_code = ENGINE_OVERLOADED


class QueueTimeout(ServiceUnavailable):
    """A ``flex`` request waited longer than the server allows for its first token."""

    default_code = "queue_timeout"


class Forbidden(APIError):
    """Authenticated, but this key may not do that (project, tier or model not granted)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class RateLimited(APIError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"


class HeadersTooLarge(APIError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "request_header_fields_too_large"
