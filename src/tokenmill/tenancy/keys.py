"""API keys and projects in the database: create, list, revoke, look up.

A key is ``tm-`` and 43 random URL-safe characters, shown once at creation. Only its SHA-256
is stored; lookups go by hash and confirm with a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from tokenmill.tenancy.limits import Limits
from tokenmill.tenancy.schema import ApiKey, KeyProject, Project
from tokenmill.tenancy.tiers import DEFAULT_GRANT, TIERS

KEY_PREFIX = "tm-"
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    """Who is calling: a stored key, a static ``--api-key`` key, or anyone (open server)."""

    key_id: str
    projects: frozenset[str] | None  # None: any project (static keys, open server)
    default_project: str
    limits: Limits
    tiers: frozenset[str]
    models: frozenset[str] | None  # None: every model


@dataclass(frozen=True)
class KeyInfo:
    """A key as ``keys list`` shows it: everything but the secret."""

    id: str
    prefix: str
    name: str | None
    projects: tuple[str, ...]  # the default first
    rpm: int | None
    tpm: int | None
    tiers: tuple[str, ...]
    models: tuple[str, ...] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x for x in text.split(",") if x)


class KeyRefused(Exception):
    """A key that does not authenticate; ``reason`` is ``invalid``, ``revoked`` or
    ``expired``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyStore:
    def __init__(self, db: Engine) -> None:
        self.db = db

    # -- projects -------------------------------------------------------------------------

    def create_project(self, project_id: str) -> None:
        if not _PROJECT_NAME.match(project_id):
            raise ValueError(f"invalid project id {project_id!r}: letters, digits, . _ - only")
        with Session(self.db) as s, s.begin():
            if s.get(Project, project_id) is not None:
                raise ValueError(f"project {project_id!r} already exists")
            s.add(Project(id=project_id, created_at=time.time()))

    def list_projects(self) -> list[tuple[str, float, int]]:
        """``(id, created_at, number of live keys)`` for every project."""
        live = (ApiKey.revoked_at.is_(None)) & (
            ApiKey.expires_at.is_(None) | (ApiKey.expires_at > time.time())
        )
        with Session(self.db) as s:
            counts = dict(
                s.execute(
                    select(KeyProject.project_id, func.count())
                    .join(ApiKey, ApiKey.id == KeyProject.key_id)
                    .where(live)
                    .group_by(KeyProject.project_id)
                ).all()
            )
            projects = s.execute(select(Project.id, Project.created_at).order_by(Project.id))
            return [(p, created, counts.get(p, 0)) for p, created in projects]

    def project_exists(self, project_id: str) -> bool:
        with Session(self.db) as s:
            return s.get(Project, project_id) is not None

    # -- keys -----------------------------------------------------------------------------

    def create_key(
        self,
        projects: Iterable[str],
        rpm: int | None = None,
        tpm: int | None = None,
        tiers: Iterable[str] = DEFAULT_GRANT,
        models: Iterable[str] | None = None,
        expires_at: float | None = None,
        name: str | None = None,
    ) -> tuple[str, str]:
        """Create a key; return ``(secret, key id)``. The secret cannot be recovered later."""
        projects = tuple(dict.fromkeys(projects))
        tiers = tuple(tiers)
        if not projects:
            raise ValueError("a key needs at least one project")
        if any(t not in TIERS for t in tiers) or not tiers:
            raise ValueError(f"tiers must be among {TIERS}")
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        with Session(self.db) as s, s.begin():
            missing = [p for p in projects if s.get(Project, p) is None]
            if missing:
                raise ValueError(
                    f"no such project: {missing[0]} (create it: tokenmill projects create "
                    f"{missing[0]})"
                )
            s.add(
                ApiKey(
                    id=key_id,
                    hash=hash_key(secret),
                    prefix=secret[:8],
                    name=name,
                    default_project=projects[0],
                    rpm=rpm,
                    tpm=tpm,
                    tiers=",".join(tiers),
                    models=None if models is None else ",".join(models),
                    created_at=time.time(),
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
            s.flush()  # the key row first: key_projects refers to it
            s.add_all(KeyProject(key_id=key_id, project_id=p) for p in projects)
        return secret, key_id

    def list_keys(self) -> list[KeyInfo]:
        with Session(self.db) as s:
            links: dict[str, list[str]] = {}
            for key_id, project in s.execute(select(KeyProject.key_id, KeyProject.project_id)):
                links.setdefault(key_id, []).append(project)
            out = []
            for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                others = sorted(p for p in links.get(k.id, []) if p != k.default_project)
                out.append(
                    KeyInfo(
                        k.id,
                        k.prefix,
                        k.name,
                        (k.default_project, *others),
                        k.rpm,
                        k.tpm,
                        _split(k.tiers) or (),
                        _split(k.models),
                        k.created_at,
                        k.expires_at,
                        k.revoked_at,
                    )
                )
            return out

    def revoke(self, key_id: str) -> bool:
        """Revoke a key (effective on its next request); False if there is no such live key."""
        with Session(self.db) as s, s.begin():
            done = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return bool(getattr(done, "rowcount", 0))

    def has_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count: revoking the last key must
        not reopen a server)."""
        with Session(self.db) as s:
            return s.scalar(select(ApiKey.id).limit(1)) is not None

    def lookup(self, secret: str) -> Caller:
        """The caller for ``secret``; ``KeyRefused`` says why not."""
        digest = hash_key(secret)
        with Session(self.db) as s:
            key = s.scalar(select(ApiKey).where(ApiKey.hash == digest))
            if key is None or not hmac.compare_digest(key.hash, digest):
                raise KeyRefused("invalid")
            if key.revoked_at is not None:
                raise KeyRefused("revoked")
            if key.expires_at is not None and key.expires_at <= time.time():
                raise KeyRefused("expired")
            return _caller(s, key)

    def caller_of(self, key_id: str) -> Caller | None:
        """The caller a stored key was, revoked or expired since or not (a batch it created
        runs on with the models the key was allowed)."""
        with Session(self.db) as s:
            key = s.get(ApiKey, key_id)
            return None if key is None else _caller(s, key)


def _caller(s: Session, key: ApiKey) -> Caller:
    projects = s.scalars(select(KeyProject.project_id).where(KeyProject.key_id == key.id))
    models = _split(key.models)
    return Caller(
        key_id=key.id,
        projects=frozenset(projects),
        default_project=key.default_project,
        limits=Limits(key.rpm, key.tpm),
        tiers=frozenset(_split(key.tiers) or ()),
        models=None if models is None else frozenset(models),
    )
