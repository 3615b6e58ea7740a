"""API-key check: ``Authorization: Bearer KEY`` or a bare ``Authorization: KEY``."""

from __future__ import annotations

import hmac

from fastapi import Request

from tokenmill.protocol.errors import Unauthorized


class StaticKeys:
    """Keys given on the command line or in ``TOKENMILL_API_KEYS``; none means open."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def open(self) -> bool:
        return not self._keys

    def check(self, request: Request) -> None:
        if self.open:
            return
        header = request.headers.get("authorization", "").strip()
        if not header:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        scheme, _, rest = header.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else header
        given = token.encode()
        # Compare against every key in constant time, so timing tells nothing about them.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise Unauthorized("Incorrect API key provided.")
