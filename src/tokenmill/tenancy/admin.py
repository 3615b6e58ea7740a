"""``tokenmill keys | projects | usage``: the operator's side of tenancy, on the database."""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

COMMANDS = ("keys", "projects", "usage")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_USAGE_GROUPS = ("model", "day", "key", "tier", "user", "status", "project")


def add_db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        help="SQLite file or database URL for keys and usage (also TOKENMILL_DB; default: "
        "tokenmill.db under the user data dir)",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument(
        "--project", action="append", required=True, help="project (repeatable; first: default)"
    )
    create.add_argument("--rpm", type=int, help="requests per minute per model")
    create.add_argument("--tpm", type=int, help="tokens per minute per model")
    create.add_argument("--tiers", default="default,flex", help="service tiers granted")
    create.add_argument("--models", help="comma list of models the key may use (default: all)")
    create.add_argument("--expires", help="lifetime (90d, 12h, 30m) or a date (2026-01-31)")
    create.add_argument("--name", help="a label for listings")
    add_db_argument(create)
    add_db_argument(keys.add_parser("list", help="list keys (never their secrets)"))
    revoke = keys.add_parser("revoke", help="revoke a key: its next request gets 401")
    revoke.add_argument("key_id")
    add_db_argument(revoke)

    projects = sub.add_parser("projects", help="create and list projects").add_subparsers(
        dest="action", required=True
    )
    pcreate = projects.add_parser("create", help="create a project")
    pcreate.add_argument("project_id")
    add_db_argument(pcreate)
    add_db_argument(projects.add_parser("list", help="list projects"))

    usage = sub.add_parser("usage", help="read the usage ledger")
    usage.add_argument("--project", help="only this project (default: all)")
    usage.add_argument("--since", help="start: a date, a UNIX time or an age (24h, 7d)")
    usage.add_argument("--until", help="end (exclusive), same forms")
    usage.add_argument(
        "--group-by", default="project,model,day", help=f"comma list of {_USAGE_GROUPS}"
    )
    usage.add_argument("--requests", action="store_true", help="one line per request instead")
    usage.add_argument("--format", choices=("table", "csv"), default="table")
    add_db_argument(usage)


def run(args: argparse.Namespace, db: str | None) -> int:
    from tokenmill.tenancy.db import open_database

    engine = open_database(db)
    try:
        if args.command == "keys":
            return _keys(args, engine)
        if args.command == "projects":
            return _projects(args, engine)
        return _usage(args, engine)
    except ValueError as e:
        print(f"tokenmill: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _keys(args: argparse.Namespace, engine: Any) -> int:
    from tokenmill.tenancy.keys import KeyStore
    from tokenmill.tenancy.tiers import parse_tiers

    store = KeyStore(engine)
    if args.action == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        secret, key_id = store.create_key(
            args.project, args.rpm, args.tpm, parse_tiers(args.tiers), models,
            parse_expiry(args.expires), args.name,
        )  # fmt: skip
        print(secret)
        print(f"created {key_id} for {', '.join(args.project)}; the key above is shown only "
              "once: store it now", file=sys.stderr)  # fmt: skip
        return 0
    if args.action == "revoke":
        if not store.revoke(args.key_id):
            print(f"tokenmill: no live key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    rows = [
        [
            k.id, k.prefix + "…", k.name or "", ",".join(k.projects), _opt(k.rpm), _opt(k.tpm),
            ",".join(k.tiers), ",".join(k.models) if k.models else "*",
            _when(k.expires_at), _key_status(k.revoked_at, k.expires_at),
        ]
        for k in store.list_keys()
    ]  # fmt: skip
    header = ["id", "key", "name", "projects", "rpm", "tpm", "tiers", "models", "expires", "status"]
    _print_table(header, rows)
    return 0


def _projects(args: argparse.Namespace, engine: Any) -> int:
    from tokenmill.tenancy.keys import KeyStore

    store = KeyStore(engine)
    if args.action == "create":
        store.create_project(args.project_id)
        print(f"created project {args.project_id}")
        return 0
    rows = [[p, _when(created), str(n)] for p, created, n in store.list_projects()]
    _print_table(["project", "created", "live keys"], rows)
    return 0


def _usage(args: argparse.Namespace, engine: Any) -> int:
    from tokenmill.tenancy.ledger import Ledger

    ledger = Ledger(engine)
    start, end = parse_time(args.since), parse_time(args.until)
    if args.requests:
        header = [
            "request_id", "created", "project", "key", "model", "tier", "endpoint", "user",
            "status", "prompt_tokens", "cached_tokens", "completion_tokens", "cost",
            "ttft_s", "duration_s",
        ]  # fmt: skip
        rows = [
            [
                r.request_id, _when(r.created_at), r.project_id, r.key_id, r.model, r.tier,
                r.endpoint, r.user or "", r.status, str(r.prompt_tokens), str(r.cached_tokens),
                str(r.completion_tokens), f"{r.cost:.6f}", _since(r.created_at, r.first_token_at),
                _since(r.created_at, r.finished_at),
            ]
            for r in ledger.rows(args.project, start, end)
        ]  # fmt: skip
    else:
        groups = [g.strip() for g in args.group_by.split(",") if g.strip()]
        bad = [g for g in groups if g not in _USAGE_GROUPS]
        if bad:
            raise ValueError(f"unknown --group-by {bad[0]!r}; use any of {_USAGE_GROUPS}")
        header = [*groups, "requests", "prompt_tokens", "cached_tokens", "completion_tokens",
                  "total_tokens", "cost"]  # fmt: skip
        summary = ledger.summary(args.project, start, end, groups)
        rows = [
            [*(str(s[g] if s[g] is not None else "") for g in groups),
             *(str(s[k]) for k in header[len(groups) : -1]), f"{s['cost']:.6f}"]
            for s in summary
        ]  # fmt: skip
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    else:
        _print_table(header, rows)
    return 0


def parse_expiry(text: str | None) -> float | None:
    """``90d`` / ``12h`` / ``30m`` / ``45s`` from now, or an ISO date or time (UTC if no zone)."""
    if not text:
        return None
    m = _DURATION.match(text.strip())
    if m:
        return time.time() + float(m.group(1)) * _UNIT[m.group(2)]
    return _iso(text)


def parse_time(text: str | None) -> float | None:
    """A UNIX time, an ISO date or time (UTC if no zone), or an age (``24h``: 24 hours ago)."""
    if not text:
        return None
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        return time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        return _iso(text)


def _iso(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2026-01-31, 2026-01-31T12:00 or 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _since(start: float, end: float | None) -> str:
    return "" if end is None else f"{end - start:.3f}"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _key_status(revoked_at: float | None, expires_at: float | None) -> str:
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= time.time():
        return "expired"
    return "active"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
