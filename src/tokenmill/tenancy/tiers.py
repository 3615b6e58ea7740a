"""Service tiers: which a key may use, what ``auto`` becomes, and their engine priorities."""

from __future__ import annotations

from tokenmill.protocol.errors import BadRequest, Forbidden

# Grantable tiers; ``auto`` is not granted, it resolves to one of these.
TIERS = ("default", "over-limit", "flex", "no-limit")
DEFAULT_GRANT = ("default", "flex")
# Engine priority (lower runs first; the scheduler ages waiting work one level per 10 s).
# ``batch`` is not granted: the Batch API's lines run at it, below everything else.
BATCH = "batch"
PRIORITY = {"default": 0, "no-limit": 0, "over-limit": 1, "flex": 2, BATCH: 3}
# Tiers that must stay within the key's RPM/TPM; the others may exceed them.
ENFORCED = frozenset({"default", "flex"})
# Tiers whose traffic fills the key's window (no-limit is exempt from limits altogether).
COUNTED = frozenset({"default", "flex", "over-limit"})


def parse_tiers(text: str) -> tuple[str, ...]:
    """``default,flex`` -> ("default", "flex"), refusing unknown names."""
    tiers = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise ValueError(f"unknown tier {unknown[0] if unknown else text!r}; one of {TIERS}")
    return tiers


def candidates(requested: str | None, granted: frozenset[str]) -> tuple[str, ...]:
    """The tiers to try, in order: admission takes the first whose limits hold.

    ``auto`` (or nothing) is ``default``, falling back to ``over-limit`` when the key is
    limited and allowed to; an explicit tier must be granted.
    """
    if requested in (None, "auto"):
        found = tuple(t for t in ("default", "over-limit") if t in granted)
        if not found:
            raise Forbidden(
                "service_tier 'auto' needs the 'default' or 'over-limit' tier, and this key "
                f"has only: {', '.join(sorted(granted))}",
                "service_tier",
                code="tier_not_allowed",
            )
        return found
    if requested not in TIERS:
        raise BadRequest(f"Unknown service_tier {requested!r}", "service_tier")
    if requested not in granted:
        raise Forbidden(
            f"This key may not use service_tier {requested!r}; it may use: "
            f"{', '.join(sorted(granted))}",
            "service_tier",
            code="tier_not_allowed",
        )
    return (requested,)
