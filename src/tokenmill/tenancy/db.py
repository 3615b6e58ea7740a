"""Where the database is and how to open it: a SQLite file by default, PostgreSQL by URL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session

from tokenmill.tenancy.schema import Base, Project

DEFAULT_PROJECT = "default"


def default_db_path() -> Path:
    return platformdirs.user_data_path("tokenmill") / "tokenmill.db"


def database_url(value: str | None) -> str:
    """A URL as given, or a file path (default: under the user's data dir) as SQLite."""
    if value and "://" in value:
        # The driver we ship is psycopg 3; plain postgresql:// would mean psycopg2.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+psycopg://" + value[len(plain) :]
        return value
    path = Path(value).expanduser() if value else default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def data_path(value: str, db: str | None) -> Path:
    """Where files and batch results live: ``value``, else beside the SQLite database (so
    one directory holds a server's state), else the user data dir (PostgreSQL)."""
    if value:
        path = Path(value).expanduser()
    elif db and "://" not in db:
        path = Path(db).expanduser().resolve().parent
    else:
        path = platformdirs.user_data_path("tokenmill")
    path.mkdir(parents=True, exist_ok=True)
    return path


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_database(value: str | None) -> Engine:
    """Open (creating tables and the ``default`` project if needed) the database."""
    url = database_url(value)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        if s.scalar(select(Project.id).where(Project.id == DEFAULT_PROJECT)) is None:
            s.add(Project(id=DEFAULT_PROJECT, created_at=time.time()))
    return engine


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    # WAL: the CLI can read and write while the server does; FULL: a committed ledger row
    # survives a crash of the machine, not only of the process.
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
