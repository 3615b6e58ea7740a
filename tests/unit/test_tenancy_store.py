"""Keys, projects and the ledger on a real database (SQLite, and PostgreSQL when available)."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tokenmill.tenancy.db import open_database
from tokenmill.tenancy.keys import KeyRefused, KeyStore, hash_key
from tokenmill.tenancy.ledger import (
    CANCELLED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    Ledger,
    Opening,
    Tokens,
)
from tokenmill.tenancy.limits import Limits
from tokenmill.tenancy.prices import Price, PriceList
from tokenmill.tenancy.schema import ApiKey, UsageRow


@pytest.fixture
def db(db_url: str) -> Engine:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


def refused(store: KeyStore, secret: str) -> str:
    with pytest.raises(KeyRefused) as e:
        store.lookup(secret)
    return e.value.reason


def test_key_is_stored_hashed_and_looked_up(db: Engine) -> None:
    store = KeyStore(db)
    store.create_project("acme")
    store.create_project("labs")
    secret, key_id = store.create_key(
        ["acme", "labs"], rpm=5, tpm=900, tiers=("default", "flex"), models=["m1"]
    )
    assert secret.startswith("tm-") and len(secret) > 40
    with Session(db) as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and row.hash == hash_key(secret) and secret not in row.prefix + "x"
        assert all(secret not in str(v) for v in vars(row).values())
    caller = store.lookup(secret)
    assert not isinstance(caller, str)
    assert caller.key_id == key_id
    assert caller.projects == {"acme", "labs"} and caller.default_project == "acme"
    assert caller.limits == Limits(5, 900)
    assert caller.tiers == {"default", "flex"} and caller.models == {"m1"}
    assert refused(store, secret + "x") == "invalid"
    assert refused(store, "tm-" + "a" * 43) == "invalid"


def test_revoke_and_expiry(db: Engine) -> None:
    store = KeyStore(db)
    assert not store.has_keys()
    secret, key_id = store.create_key(["default"])
    assert store.has_keys()
    assert store.revoke(key_id)
    assert refused(store, secret) == "revoked"
    assert not store.revoke(key_id)  # already revoked
    assert store.has_keys()  # revoking the last key does not reopen the server
    soon, _ = store.create_key(["default"], expires_at=time.time() - 1)
    assert refused(store, soon) == "expired"
    assert store.list_keys()[0].id == key_id


def test_projects_must_exist_and_be_well_named(db: Engine) -> None:
    store = KeyStore(db)
    with pytest.raises(ValueError, match="no such project"):
        store.create_key(["ghost"])
    with pytest.raises(ValueError, match="invalid project id"):
        store.create_project("bad name")
    store.create_project("p1")
    with pytest.raises(ValueError, match="already exists"):
        store.create_project("p1")
    store.create_key(["p1"])
    assert [(p, n) for p, _, n in store.list_projects()] == [("default", 0), ("p1", 1)]


def opening(rid: str, project: str = "default", prompt: int = 10, tier: str = "default") -> Opening:
    return Opening(rid, "key_x", project, "m", tier, "chat", "u1", prompt, time.time())


async def test_ledger_rows_are_opened_progressed_and_closed(db: Engine) -> None:
    prices = PriceList({"m": Price(input=2.0, output=8.0, cached_input=1.0)}, flex_discount=0.5)
    ledger = Ledger(db, prices)
    ledger.start()
    try:
        await ledger.open(opening("r1"))
        await ledger.open(opening("r2", tier="flex"))
        await ledger.open(opening("r3", project="other"))
        ledger.progress("r1", Tokens(10, 4, 3), time.time())
        ledger.close("r1", FINISHED, "m", "default", Tokens(10, 4, 7), time.time())
        ledger.close("r2", CANCELLED, "m", "flex", Tokens(10, 0, 2), None)
        ledger.progress("r2", Tokens(10, 0, 99), None)  # late progress never reopens a row
        await ledger.flush()
        rows = {r.request_id: r for r in ledger.rows()}
        assert rows["r1"].status == FINISHED
        assert (rows["r1"].prompt_tokens, rows["r1"].cached_tokens) == (10, 4)
        assert rows["r1"].completion_tokens == 7
        assert rows["r1"].cost == pytest.approx((6 * 2.0 + 4 * 1.0 + 7 * 8.0) / 1e6)
        assert rows["r2"].status == CANCELLED and rows["r2"].completion_tokens == 2
        assert rows["r2"].cost == pytest.approx((10 * 2.0 + 2 * 8.0) / 1e6 * 0.5)
        assert rows["r3"].status == PENDING
        summary = ledger.summary("default", None, None, ["status"])
        assert [(s["status"], s["requests"], s["total_tokens"]) for s in summary] == [
            ("cancelled", 1, 12),
            ("finished", 1, 17),
        ]
        assert ledger.summary("other", None, None)[0]["prompt_tokens"] == 10
        assert ledger.summary("default", time.time() + 10, None) == [
            {
                "requests": 0,
                "prompt_tokens": 0,
                "cached_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "cost": 0.0,
            }
        ]
    finally:
        ledger.stop()


async def test_recover_marks_pending_rows_interrupted_with_the_tokens_known(db: Engine) -> None:
    ledger = Ledger(db)
    ledger.start()
    await ledger.open(opening("crashed", prompt=12))
    ledger.progress("crashed", Tokens(12, 0, 5), time.time())
    await ledger.open(opening("done"))
    ledger.close("done", FINISHED, "m", "default", Tokens(10, 0, 1), None)
    ledger.stop()  # as if the process died here: "crashed" is still pending
    again = Ledger(db)
    assert again.recover() == 1
    rows = {r.request_id: r for r in again.rows()}
    assert rows["crashed"].status == INTERRUPTED
    assert (rows["crashed"].prompt_tokens, rows["crashed"].completion_tokens) == (12, 5)
    assert rows["done"].status == FINISHED
    assert again.recover() == 0


async def test_a_failing_write_does_not_sink_the_others(db: Engine) -> None:
    ledger = Ledger(db)
    ledger.start()
    try:
        await ledger.open(opening("dup"))
        results = await asyncio.gather(
            ledger.open(opening("dup")),  # primary key taken: this one fails
            ledger.open(opening("fine")),
            return_exceptions=True,
        )
        assert isinstance(results[0], Exception) and results[1] is None
        with Session(db) as s:
            ids = set(s.scalars(select(UsageRow.request_id)))
        assert ids == {"dup", "fine"}
    finally:
        ledger.stop()
