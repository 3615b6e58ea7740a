"""One request's accounting: admission (tier, rate limits), tokens as they come, and the
ledger row, finalized exactly once whatever way the request ends."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from tokenmill.protocol.errors import REPLICA_LOST, RateLimited, ServiceUnavailable
from tokenmill.tenancy.ledger import ERROR, INTERRUPTED, TIMEOUT, Opening, Tokens
from tokenmill.tenancy.limits import Decision, Snapshot
from tokenmill.tenancy.tiers import COUNTED, ENFORCED, PRIORITY, candidates

if TYPE_CHECKING:
    from tokenmill.tenancy.service import Principal, Tenancy

log = logging.getLogger("tokenmill.requests")
PROGRESS_EVERY = 1.0  # seconds between progress writes of a running request


class Meter:
    """Implements serving's ``RequestMeter``; the route closes it in a ``finally``."""

    def __init__(
        self,
        tenancy: Tenancy,
        principal: Principal,
        model: str,
        requested_tier: str | None,
        endpoint: str,
        user: str | None,
        fields: dict[str, Any] | None = None,
        tier: str | None = None,
    ) -> None:
        self.tenancy, self.principal, self.model = tenancy, principal, model
        # The request's log line (api/requestlog.py): the meter adds the usage at close.
        self.fields = fields if fields is not None else {}
        self.endpoint, self.user = endpoint, user
        # A fixed ``tier`` (the Batch API's) is the server's choice, not the client's.
        self.candidates = (
            (tier,) if tier else candidates(requested_tier, principal.caller.tiers)
        )  # 403 if not granted
        self.tier = self.candidates[0]
        self.limits = tenancy.limits_for(principal.caller, model)
        self.request_id: str | None = None
        self.snapshot: Snapshot | None = None
        self.reservation: object | None = None  # the limiter's, for settling
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached: dict[int, int] = {}  # per engine request: the last count reported
        self.first_token_at: float | None = None
        self.failure: str | None = None  # ERROR or TIMEOUT, once seen
        self.closed = False
        self._last_progress = 0.0

    @property
    def bucket(self) -> tuple[str, str]:
        return (self.principal.caller.key_id, self.model)

    @property
    def tokens(self) -> Tokens:
        return Tokens(self.prompt_tokens, sum(self.cached.values()), self.completion_tokens)

    # -- RequestMeter -----------------------------------------------------------------------

    async def admit(
        self, request_id: str, prompt_tokens: int, max_new_tokens: int
    ) -> tuple[str, int]:
        """Admit or raise 429; then write the pending row (503 if the ledger cannot). Returns
        (tier, priority)."""
        self._check_limits(prompt_tokens + max_new_tokens)  # no await: atomic on the loop
        self.request_id, self.prompt_tokens = request_id, prompt_tokens
        now = time.time()
        self._last_progress = time.monotonic()
        p = self.principal
        opening = Opening(
            request_id, p.caller.key_id, p.project, self.model, self.tier, self.endpoint,
            self.user, prompt_tokens, now,
        )  # fmt: skip
        try:
            await self.tenancy.ledger.open(opening)
        except Exception as e:
            log.error("usage ledger write failed: %s", e)
            raise ServiceUnavailable("The usage ledger is unavailable; try again later.") from e
        return self.tier, PRIORITY[self.tier]

    def observe(
        self, index: int, new_tokens: int, cached_tokens: int, failed: bool, code: str | None
    ) -> None:
        self.cached[index] = cached_tokens
        self.completion_tokens += new_tokens
        if new_tokens and self.first_token_at is None:
            self.first_token_at = time.time()
        if failed:  # a lost replica is the server dying under the request, not an error of it
            self.failure = INTERRUPTED if code == REPLICA_LOST else ERROR
        now = time.monotonic()
        if self.request_id and now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.tenancy.ledger.progress(self.request_id, self.tokens, self.first_token_at)

    @property
    def first_output_timeout(self) -> float | None:
        return self.tenancy.flex_timeout if self.tier == "flex" else None

    def timed_out(self) -> None:
        self.failure = TIMEOUT

    # -- for the route ----------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers: as of admission, or now if not admitted."""
        snap = self.snapshot or self.tenancy.limiter.peek(self.bucket, self.limits)
        return snap.headers() if snap is not None else {}

    def close(self, status: str) -> None:
        """Settle the limits and finalize the ledger row; later calls do nothing. An error or
        timeout seen on the way wins over ``status``."""
        if self.closed:
            return
        self.closed = True
        if self.request_id is None:  # never admitted: nothing reserved, no row
            return
        status = self.failure or status
        tokens = self.tokens
        if self.reservation is not None:
            self.tenancy.limiter.settle(self.reservation, tokens.total)
        self.tenancy.ledger.close(
            self.request_id, status, self.model, self.tier, tokens, self.first_token_at
        )
        self.fields.update(
            id=self.request_id, outcome=status, served_model=self.model, tier=self.tier,
            prompt_tokens=tokens.prompt, cached_tokens=tokens.cached,
            completion_tokens=tokens.completion,
        )  # fmt: skip

    def _check_limits(self, tokens: int) -> None:
        refused: Decision | None = None
        for tier in self.candidates:
            d = self.tenancy.limiter.admit(
                self.bucket, self.limits, tokens, enforce=tier in ENFORCED, count=tier in COUNTED
            )
            if d.admitted:
                self.tier, self.reservation, self.snapshot = tier, d.reservation, d.snapshot
                return
            refused = refused or d
        assert refused is not None
        raise _rate_limited(refused, self.limits.rpm, self.limits.tpm, tokens, self.model)


def _rate_limited(
    d: Decision, rpm: int | None, tpm: int | None, tokens: int, model: str
) -> RateLimited:
    headers = d.snapshot.headers() if d.snapshot else {}
    if d.limited_by == "requests":
        what = f"requests per minute (RPM): Limit {rpm}, Requested 1"
    else:
        what = f"tokens per minute (TPM): Limit {tpm}, Requested {tokens}"
    if d.retry_after is None:
        msg = f"Request too large for {model} in {what}. Reduce max_tokens or the prompt."
    else:
        wait = max(d.retry_after, 0.001)
        headers["retry-after"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        msg = f"Rate limit reached for {model} in {what}. Please try again in {wait:.3f}s."
    err = RateLimited(msg, headers=headers)
    err.error_type = d.limited_by or "requests"  # OpenAI says which limit: requests or tokens
    return err
