"""The server's view of tenancy: who is calling, for which project, and a meter per request."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from tokenmill.batches.store import BatchStore
from tokenmill.protocol.errors import Forbidden, Unauthorized
from tokenmill.tenancy.auth import StaticKeys, bearer_token
from tokenmill.tenancy.db import DEFAULT_PROJECT
from tokenmill.tenancy.keys import Caller, KeyRefused, KeyStore
from tokenmill.tenancy.ledger import Ledger
from tokenmill.tenancy.limits import Limiter, Limits, RateLimiter
from tokenmill.tenancy.meter import Meter
from tokenmill.tenancy.tiers import TIERS

_REFUSED = {
    "invalid": "Incorrect API key provided.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller acting for one project."""

    caller: Caller
    project: str


def admin_caller(key_id: str) -> Caller:
    """Static ``--api-key`` keys and open servers: every project and tier, no limits."""
    return Caller(key_id, None, DEFAULT_PROJECT, Limits(), frozenset(TIERS), None)


class Tenancy:
    def __init__(
        self,
        store: KeyStore,
        ledger: Ledger,
        static: StaticKeys,
        flex_timeout: float,
        model_limits: dict[str, Limits] | None = None,
        limiter: Limiter | None = None,
        batches: BatchStore | None = None,
    ) -> None:
        self.store, self.ledger, self.static = store, ledger, static
        self.batches = batches  # files and batches (the Batch API), when served
        self.flex_timeout = flex_timeout
        # Per served model id: the limits of keys that set none of their own.
        self.model_limits = model_limits or {}
        # In this process's memory, or shared by a fleet's ingresses (Redis).
        self.limiter: Limiter = limiter or RateLimiter()
        self._closed = not static.open  # once a key exists the server never reopens

    async def is_open(self) -> bool:
        """No static keys and no key ever created: anyone may call (the quick start)."""
        if not self._closed:
            self._closed = await asyncio.to_thread(self.store.has_keys)
        return not self._closed

    async def authenticate(self, authorization: str | None, project: str | None) -> Principal:
        """The caller and project (``ai_project_id``, else the key's default), or 401 (no or
        bad key) / 403 (project not the key's)."""
        caller = await self._caller(authorization)
        project = project or caller.default_project
        # Admin callers (static keys, open server) may act for any project id, as the hosted
        # API's clients send them; stored keys only for their own projects.
        if caller.projects is not None and project not in caller.projects:
            raise Forbidden(
                f"This API key does not belong to project {project!r}.",
                code="project_not_allowed",
            )
        return Principal(caller, project)

    async def _caller(self, authorization: str | None) -> Caller:
        if await self.is_open():
            return admin_caller("open")
        token = bearer_token(authorization)
        static = self.static.match(token)
        if static is not None:
            return admin_caller("static-" + hashlib.sha256(static.encode()).hexdigest()[:8])
        try:
            return await asyncio.to_thread(self.store.lookup, token)
        except KeyRefused as e:
            raise Unauthorized(_REFUSED[e.reason]) from None

    def caller_of(self, key_id: str) -> Caller:
        """Who ``key_id`` was (for work done later on its behalf: batches)."""
        if key_id == "open" or key_id.startswith("static-"):
            return admin_caller(key_id)
        caller = self.store.caller_of(key_id)
        if caller is None:  # deleted from the database by hand: nothing to run as
            raise Forbidden(f"The API key {key_id} no longer exists.")
        return caller

    def meter(
        self,
        principal: Principal,
        model: str,
        asked_as: str,
        tier: str | None,
        endpoint: str,
        user: str | None,
        fields: dict[str, Any] | None = None,
        fixed_tier: str | None = None,
    ) -> Meter:
        """A meter for one request on ``model`` (the served id; ``asked_as`` is the name the
        client used); 403 if the key may not use that model or tier."""
        allowed = principal.caller.models
        if allowed is not None and model not in allowed and asked_as not in allowed:
            raise Forbidden(
                f"This API key may not use model {asked_as!r}.", "model", code="model_not_allowed"
            )
        return Meter(self, principal, model, tier, endpoint, user, fields, fixed_tier)

    def limits_for(self, caller: Caller, model: str) -> Limits:
        """A key's own limits, each one it leaves unset taken from the model's defaults;
        admin callers (static keys, an open server) have none."""
        if caller.projects is None:
            return caller.limits
        default = self.model_limits.get(model, Limits())
        own = caller.limits
        return Limits(
            own.rpm if own.rpm is not None else default.rpm,
            own.tpm if own.tpm is not None else default.tpm,
        )
