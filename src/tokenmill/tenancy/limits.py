"""Requests-per-minute and tokens-per-minute limits: an exact sliding window per key and model.

Admission reserves prompt + ``max_tokens`` tokens; settlement replaces the reservation with the
real count when the request ends. Check and reservation happen under one lock, so concurrent
requests can never be over-admitted.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

WINDOW = 60.0  # seconds


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None


@dataclass(eq=False)
class Reservation:
    """One admitted request's place in its window."""

    window: _Window
    at: float
    tokens: int
    live: bool = True  # False once it has left the window


@dataclass(eq=False)
class _Window:
    entries: deque[Reservation] = field(default_factory=deque)
    tokens: int = 0

    def prune(self, now: float) -> None:
        while self.entries and self.entries[0].at <= now - WINDOW:
            gone = self.entries.popleft()
            gone.live = False
            self.tokens -= gone.tokens

    def snapshot(self, limits: Limits, now: float) -> Snapshot:
        last = self.entries[-1].at + WINDOW - now if self.entries else 0.0
        last_tokens = next((e.at for e in reversed(self.entries) if e.tokens), None)
        return Snapshot(
            limits,
            requests_used=len(self.entries),
            tokens_used=self.tokens,
            reset_requests=max(last, 0.0),
            reset_tokens=0.0 if last_tokens is None else max(last_tokens + WINDOW - now, 0.0),
        )


@dataclass(frozen=True)
class Snapshot:
    """A window's state, as the ``x-ratelimit-*`` headers report it."""

    limits: Limits
    requests_used: int
    tokens_used: int
    reset_requests: float  # seconds until the window is empty again
    reset_tokens: float

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limits.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(self.limits.rpm)
            out["x-ratelimit-remaining-requests"] = str(
                max(self.limits.rpm - self.requests_used, 0)
            )
            out["x-ratelimit-reset-requests"] = duration(self.reset_requests)
        if self.limits.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limits.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(self.limits.tpm - self.tokens_used, 0))
            out["x-ratelimit-reset-tokens"] = duration(self.reset_tokens)
        return out


@dataclass(frozen=True)
class Decision:
    admitted: bool
    # The limiter's handle on the place taken (given back to ``settle``); None if not counted.
    reservation: Any = None
    snapshot: Snapshot | None = None
    limited_by: str | None = None  # "requests" or "tokens" when refused
    retry_after: float | None = None  # None when waiting cannot help (request too large)


class Limiter(Protocol):
    """What the meter needs of a limiter: this process's (``RateLimiter``) or a fleet's
    (``redis_limits.RedisRateLimiter``)."""

    def admit(
        self,
        bucket: tuple[str, str],
        limits: Limits,
        tokens: int,
        enforce: bool = True,
        count: bool = True,
    ) -> Decision: ...

    def settle(self, res: Any, tokens: int) -> None: ...

    def peek(self, bucket: tuple[str, str], limits: Limits) -> Snapshot | None: ...


class RateLimiter:
    """All windows of one server process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}

    def admit(
        self,
        bucket: tuple[str, str],
        limits: Limits,
        tokens: int,
        enforce: bool = True,
        count: bool = True,
    ) -> Decision:
        """Reserve ``tokens`` for one request if ``limits`` allow it (or ``enforce`` is off);
        ``count`` puts the request in the window so it uses up quota."""
        if not limits.any:
            return Decision(True)
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(bucket, _Window())
            window.prune(now)
            if enforce:
                refused = _refusal(window, limits, tokens, now)
                if refused is not None:
                    return Decision(False, None, window.snapshot(limits, now), *refused)
            res = None
            if count:
                res = Reservation(window, now, tokens)
                window.entries.append(res)
                window.tokens += tokens
            return Decision(True, res, window.snapshot(limits, now))

    def settle(self, res: Any, tokens: int) -> None:
        """Replace the reserved count with the real one."""
        assert isinstance(res, Reservation)
        with self._lock:
            if res.live:
                res.window.tokens += tokens - res.tokens
            res.tokens = tokens

    def cancel(self, res: Reservation) -> None:
        """Take a reservation back out of its window (the request was refused after all)."""
        with self._lock:
            if res.live:
                res.window.entries.remove(res)
                res.window.tokens -= res.tokens
                res.live = False

    def peek(self, bucket: tuple[str, str], limits: Limits) -> Snapshot | None:
        if not limits.any:
            return None
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(bucket, _Window())
            window.prune(now)
            return window.snapshot(limits, now)


def _refusal(
    window: _Window, limits: Limits, tokens: int, now: float
) -> tuple[str, float | None] | None:
    """Why one more request of ``tokens`` does not fit, and when it would."""
    if limits.rpm is not None and len(window.entries) + 1 > limits.rpm:
        if not window.entries:
            return "requests", None
        return "requests", window.entries[0].at + WINDOW - now
    if limits.tpm is not None and window.tokens + tokens > limits.tpm:
        if tokens > limits.tpm:
            return "tokens", None
        freed = 0
        for entry in window.entries:
            freed += entry.tokens
            if window.tokens - freed + tokens <= limits.tpm:
                return "tokens", entry.at + WINDOW - now
        return "tokens", WINDOW  # settlements pending; a full window always suffices
    return None


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"
