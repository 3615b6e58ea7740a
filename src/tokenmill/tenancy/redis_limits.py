"""The same exact sliding-window limits as ``limits.RateLimiter``, kept in Redis so that every
ingress of a fleet shares one window per key and model (``--redis URL``).

Admission is one Lua script: prune the window, check both limits, reserve; Redis runs each
script alone, so no two ingresses can both take the last place. Times are Redis's own clock
(``TIME``), not the ingresses'. Settlement replaces the reserved count with the real one.
Each call is one round trip (a fraction of a millisecond on a local network), made where
the in-memory limiter does its work; an unreachable Redis refuses the request with a 503
rather than letting it through unlimited.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis

from tokenmill.protocol.errors import ServiceUnavailable
from tokenmill.tenancy.limits import WINDOW, Decision, Limits, Snapshot

# KEYS: the window's sorted set (reservation id -> time) and hash (id -> tokens).
# ARGV: rpm, tpm (-1: none), tokens, enforce, count, id, window seconds.
# Returns strings (Lua numbers become integers on the way out):
# admitted, requests used, tokens used, reset requests, reset tokens, limited by, retry after.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local enforce, count, win = ARGV[4] == '1', ARGV[5] == '1', tonumber(ARGV[7])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - win)) do
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local ats, toks, used = {}, {}, 0
for i = 1, #entries, 2 do
  local n = tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
  table.insert(ats, tonumber(entries[i + 1])); table.insert(toks, n); used = used + n
end
local limited, retry = '', ''
if enforce then
  if rpm >= 0 and #ats + 1 > rpm then
    limited = 'requests'
    if #ats > 0 then retry = tostring(ats[1] + win - now) end
  elseif tpm >= 0 and used + tokens > tpm then
    limited = 'tokens'
    if tokens <= tpm then
      retry = tostring(win)
      local freed = 0
      for i = 1, #ats do
        freed = freed + toks[i]
        if used - freed + tokens <= tpm then retry = tostring(ats[i] + win - now); break end
      end
    end
  end
end
local admitted = limited == ''
if admitted and count then
  redis.call('ZADD', KEYS[1], now, ARGV[6]); redis.call('HSET', KEYS[2], ARGV[6], tokens)
  redis.call('EXPIRE', KEYS[1], math.ceil(win) + 1)
  redis.call('EXPIRE', KEYS[2], math.ceil(win) + 1)
  table.insert(ats, now); table.insert(toks, tokens); used = used + tokens
end
local reset_req, reset_tok = 0, 0
if #ats > 0 then reset_req = math.max(ats[#ats] + win - now, 0) end
for i = #ats, 1, -1 do
  if toks[i] > 0 then reset_tok = math.max(ats[i] + win - now, 0); break end
end
return {admitted and '1' or '0', tostring(#ats), tostring(used), tostring(reset_req),
        tostring(reset_tok), limited, retry}
"""
# KEYS: the window's hash. ARGV: reservation id, real tokens. Only while it is in the window.
_SETTLE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


@dataclass(eq=False)
class RedisReservation:
    hash_key: str
    id: str


class RedisRateLimiter:
    """Implements the limiter the meter uses (``admit``, ``settle``, ``peek``) over Redis."""

    def __init__(self, url: str, prefix: str = "tokenmill:rl") -> None:
        self.url, self.prefix = url, prefix
        self.client: Any = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)

    def ping(self) -> None:
        """Fail at start-up, not at the first request, when Redis cannot be reached."""
        self.client.ping()

    def _keys(self, bucket: tuple[str, str]) -> list[str]:
        base = f"{self.prefix}:{bucket[0]}:{bucket[1]}"
        return [base + ":at", base + ":tokens"]

    def admit(
        self,
        bucket: tuple[str, str],
        limits: Limits,
        tokens: int,
        enforce: bool = True,
        count: bool = True,
    ) -> Decision:
        if not limits.any:
            return Decision(True)
        rid = uuid.uuid4().hex
        keys = self._keys(bucket)
        out = self._call(self._admit, keys, _args(limits, tokens, enforce, count, rid))
        admitted, snap = out[0] == b"1", _snapshot(limits, out)
        if not admitted:
            retry = float(out[6]) if out[6] else None
            return Decision(False, None, snap, out[5].decode(), retry)
        res = RedisReservation(keys[1], rid) if count else None
        return Decision(True, res, snap)

    def settle(self, res: Any, tokens: int) -> None:
        if isinstance(res, RedisReservation):
            self._call(self._settle, [res.hash_key], [res.id, tokens])

    def peek(self, bucket: tuple[str, str], limits: Limits) -> Snapshot | None:
        if not limits.any:
            return None
        out = self._call(self._admit, self._keys(bucket), _args(limits, 0, False, False, "-"))
        return _snapshot(limits, out)

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as e:
            raise ServiceUnavailable(
                "The rate limiter is unavailable; try again later.",
                headers={"retry-after": "5"},
            ) from e


def _args(limits: Limits, tokens: int, enforce: bool, count: bool, rid: str) -> list[Any]:
    rpm = -1 if limits.rpm is None else limits.rpm
    tpm = -1 if limits.tpm is None else limits.tpm
    return [rpm, tpm, tokens, int(enforce), int(count), rid, WINDOW]


def _snapshot(limits: Limits, out: list[bytes]) -> Snapshot:
    return Snapshot(limits, int(out[1]), int(float(out[2])), float(out[3]), float(out[4]))
