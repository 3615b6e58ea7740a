"""``db_url``: a fresh database for each test, SQLite always and PostgreSQL where
``TOKENMILL_TEST_DATABASE_URL`` names a server we may create databases on; ``redis_url``
where ``TOKENMILL_TEST_REDIS_URL`` names a Redis server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "TOKENMILL_TEST_DATABASE_URL"
REDIS_ENV = "TOKENMILL_TEST_REDIS_URL"
E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ loads the real model: mark it, so ``-m "not e2e"`` runs
    what needs no model."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "tokenmill.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL to test on")
    yield from _fresh_postgres(base)


def _fresh_postgres(base: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tokenmill.tenancy.db import database_url

    admin_url = make_url(database_url(base))
    name = "tm_test_" + uuid.uuid4().hex[:12]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # a server that is down must not fail the suite
        admin.dispose()
        pytest.skip(f"PostgreSQL at {admin_url.render_as_string()} unusable: {e}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """A Redis server for shared rate limits (``.ci/redis.sh`` starts one), flushed of
    earlier tests' windows by each test's own key prefix."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: no Redis to test on")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis at {url} unusable: {e}")
    return url
