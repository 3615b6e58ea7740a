"""The database tables. Times are UNIX seconds (floats), so SQLite and PostgreSQL agree."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float]


class ApiKey(Base):
    """A key's secret is never stored: only its SHA-256 (keys are long random strings, so a
    fast hash is enough) and a short prefix that lets people recognise it in listings."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128))
    default_project: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    rpm: Mapped[int | None]
    tpm: Mapped[int | None]
    tiers: Mapped[str] = mapped_column(String(128))  # comma-separated grants
    models: Mapped[str | None] = mapped_column(String(1024))  # comma-separated; None: all
    created_at: Mapped[float]
    expires_at: Mapped[float | None]
    revoked_at: Mapped[float | None]


class KeyProject(Base):
    __tablename__ = "key_projects"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)


class UsageRow(Base):
    """One request: written ``pending`` at admission, finalized when it ends. No prompt or
    output text is ever stored."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_project_time", "project_id", "created_at"),)

    request_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    tier: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(16))
    user: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), index=True)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    cached_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[float]  # admission
    first_token_at: Mapped[float | None]
    finished_at: Mapped[float | None]
    day: Mapped[str] = mapped_column(String(10))  # UTC date of admission, for grouping
