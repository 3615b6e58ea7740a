"""API keys on the wire (``Authorization: Bearer KEY`` or a bare ``Authorization: KEY``) and the
static keys given on the command line; stored keys live in ``tenancy.keys``."""

from __future__ import annotations

import hmac

from tokenmill.protocol.errors import Unauthorized


def bearer_token(header: str | None) -> str:
    """The key in an ``Authorization`` header, or 401 if there is none."""
    header = (header or "").strip()
    scheme, _, rest = header.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else header
    if not token:
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    return token


class StaticKeys:
    """Keys given on the command line or in ``TOKENMILL_API_KEYS``."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k for k in keys if k)

    @property
    def open(self) -> bool:
        return not self._keys

    def match(self, token: str) -> str | None:
        """The static key equal to ``token``, if any."""
        given = token.encode()
        found = None
        # Compare against every key in constant time, so timing tells nothing about them.
        for key in self._keys:
            if hmac.compare_digest(given, key.encode()):
                found = key
        return found
