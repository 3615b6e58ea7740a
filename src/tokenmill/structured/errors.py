"""What structured output raises; the HTTP edge (``api/errors.py``) picks each one's status."""

from __future__ import annotations


class StructuredError(Exception):
    """A constraint that cannot be used now; ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidConstraint(StructuredError):
    """The client's schema, regex, grammar, choice list or tools are wrong (a 400)."""


class CompilerBusy(StructuredError):
    """No compile slot came free in time: the server's problem, retry later (a 503)."""
