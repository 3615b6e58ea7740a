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


class FileRow(Base):
    """An uploaded file (``purpose`` batch) or a batch's output or error file; the bytes are
    on disk under the data directory at ``path`` (relative to it)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_project_time", "project_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(256))
    bytes: Mapped[int]
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float]


class BatchRow(Base):
    """A batch: its input file, where it stands, and what its lines came to. A worker holds
    it with a lease (``owner``, ``lease_until``) so that several servers sharing the database
    run each batch once."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_project_time", "project_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(32))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), index=True)
    metadata_json: Mapped[str | None] = mapped_column(String(8192))
    errors_json: Mapped[str | None] = mapped_column(String(65536))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(default=0)
    completed: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[float]
    expires_at: Mapped[float]
    in_progress_at: Mapped[float | None]
    finalizing_at: Mapped[float | None]
    completed_at: Mapped[float | None]
    failed_at: Mapped[float | None]
    expired_at: Mapped[float | None]
    cancelling_at: Mapped[float | None]
    cancelled_at: Mapped[float | None]
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[float | None]
