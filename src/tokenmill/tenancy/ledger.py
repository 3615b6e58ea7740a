"""The usage ledger: one row per admitted request, written by one background thread.

Admission inserts the row as ``pending`` and waits for the commit, so a request that started is
on disk before its first byte goes out. Progress and the final update are queued without
waiting; the writer batches whatever is queued into one transaction. Rows a crash left
``pending`` become ``interrupted`` at the next start, with the tokens last written.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokenmill.tenancy.prices import PriceList
from tokenmill.tenancy.schema import UsageRow

log = logging.getLogger(__name__)

PENDING = "pending"
FINISHED = "finished"
CANCELLED = "cancelled"  # the client went away
ERROR = "error"
TIMEOUT = "timeout"  # a flex request waited too long for its first token
INTERRUPTED = "interrupted"  # the server died while it ran

# What ``group_by`` may name, and the column each reads.
GROUPS = {
    "model": UsageRow.model,
    "day": UsageRow.day,
    "key": UsageRow.key_id,
    "tier": UsageRow.tier,
    "user": UsageRow.user,
    "status": UsageRow.status,
    "project": UsageRow.project_id,
}


@dataclass(frozen=True)
class Tokens:
    prompt: int = 0
    cached: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True)
class Opening:
    """What is known of a request at admission."""

    request_id: str
    key_id: str
    project_id: str
    model: str
    tier: str
    endpoint: str
    user: str | None
    prompt_tokens: int
    created_at: float


@dataclass(frozen=True)
class _Op:
    apply: Callable[[Session], Any]
    done: Future[None] | None = None


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


class Ledger:
    def __init__(self, db: Engine, prices: PriceList | None = None) -> None:
        self.db = db
        self.prices = prices or PriceList()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def recover(self) -> int:
        """Mark rows a crash left ``pending`` as ``interrupted``; call before serving.
        Assumes one server per database (another live server's rows would be marked too)."""
        with Session(self.db) as s, s.begin():
            rows = s.scalars(select(UsageRow).where(UsageRow.status == PENDING)).all()
            for row in rows:
                row.status = INTERRUPTED
                row.cost = self.prices.cost(
                    row.model, row.tier, row.prompt_tokens, row.cached_tokens,
                    row.completion_tokens,
                )  # fmt: skip
            return len(rows)

    # -- writes (from the event loop) ---------------------------------------------------------

    async def open(self, o: Opening) -> None:
        """Insert the ``pending`` row and wait until it is committed."""
        row = dict(
            request_id=o.request_id, key_id=o.key_id, project_id=o.project_id, model=o.model,
            tier=o.tier, endpoint=o.endpoint, user=o.user, status=PENDING,
            prompt_tokens=o.prompt_tokens, cached_tokens=0, completion_tokens=0, cost=0.0,
            created_at=o.created_at, first_token_at=None, finished_at=None,
            day=utc_day(o.created_at),
        )  # fmt: skip
        await self._submit(lambda s: s.add(UsageRow(**row)))

    def progress(self, request_id: str, tokens: Tokens, first_token_at: float | None) -> None:
        """Record tokens so far (what a crash would leave), without waiting."""
        stmt = (
            update(UsageRow)
            .where(UsageRow.request_id == request_id, UsageRow.status == PENDING)
            .values(
                prompt_tokens=tokens.prompt,
                cached_tokens=tokens.cached,
                completion_tokens=tokens.completion,
                first_token_at=first_token_at,
            )
        )
        self._queue.put(_Op(lambda s: s.execute(stmt)))

    def close(
        self,
        request_id: str,
        status: str,
        model: str,
        tier: str,
        tokens: Tokens,
        first_token_at: float | None,
    ) -> None:
        """Finalize the row, without waiting (it runs in ``finally`` blocks)."""
        cost = self.prices.cost(model, tier, tokens.prompt, tokens.cached, tokens.completion)
        stmt = (
            update(UsageRow)
            .where(UsageRow.request_id == request_id)
            .values(
                status=status,
                prompt_tokens=tokens.prompt,
                cached_tokens=tokens.cached,
                completion_tokens=tokens.completion,
                cost=cost,
                first_token_at=first_token_at,
                finished_at=time.time(),
            )
        )
        self._queue.put(_Op(lambda s: s.execute(stmt)))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._submit(lambda s: None)

    async def _submit(self, apply: Callable[[Session], Any]) -> None:
        if self._thread is None:
            raise RuntimeError("the ledger writer is not running")
        done: Future[None] = Future()
        self._queue.put(_Op(apply, done))
        await asyncio.wrap_future(done)

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            self._write([op for op in batch if op is not None])

    def _write(self, ops: list[_Op]) -> None:
        if not ops:
            return
        try:
            self._commit(ops)
        except Exception:
            # One bad operation must not sink the others: retry them one by one.
            log.exception("ledger batch failed; retrying its %d writes one by one", len(ops))
            for op in ops:
                self._write_one(op)
            return
        for op in ops:
            _resolve(op.done, None)

    def _write_one(self, op: _Op) -> None:
        error: BaseException | None = None
        for attempt in range(5):
            try:
                self._commit([op])
                error = None
                break
            except IntegrityError as e:  # waiting will not fix it
                error = e
                break
            except Exception as e:  # locked, connection lost: worth another try
                error = e
                time.sleep(0.1 * 2**attempt)
        if error is not None:
            log.error("ledger write lost after retries: %s", error)
        _resolve(op.done, error)

    def _commit(self, ops: list[_Op]) -> None:
        with Session(self.db) as s, s.begin():
            for op in ops:
                op.apply(s)

    # -- reads (blocking: call from a thread or the CLI) ---------------------------------------

    def summary(
        self,
        project: str | None,
        start: float | None,
        end: float | None,
        group_by: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Token and cost totals per group (``GROUPS``), over ``[start, end)``."""
        cols = [GROUPS[g].label(g) for g in group_by]
        total = func.coalesce
        stmt = select(
            *cols,
            func.count().label("requests"),
            total(func.sum(UsageRow.prompt_tokens), 0).label("prompt_tokens"),
            total(func.sum(UsageRow.cached_tokens), 0).label("cached_tokens"),
            total(func.sum(UsageRow.completion_tokens), 0).label("completion_tokens"),
            total(func.sum(UsageRow.cost), 0.0).label("cost"),
        ).where(*_filters(project, start, end))
        if group_by:
            keys = [GROUPS[g] for g in group_by]
            stmt = stmt.group_by(*keys).order_by(*keys)
        with Session(self.db) as s:
            out = []
            for row in s.execute(stmt).mappings():
                item = {g: row[g] for g in group_by}
                for name in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens"):
                    item[name] = int(row[name])
                item["total_tokens"] = item["prompt_tokens"] + item["completion_tokens"]
                item["cost"] = round(float(row["cost"]), 10)
                out.append(item)
            return out

    def rows(
        self, project: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[UsageRow]:
        """Every request's row, oldest first."""
        stmt = select(UsageRow).where(*_filters(project, start, end))
        with Session(self.db, expire_on_commit=False) as s:
            return list(s.scalars(stmt.order_by(UsageRow.created_at, UsageRow.request_id)))


def _filters(project: str | None, start: float | None, end: float | None) -> list[Any]:
    out = []
    if project is not None:
        out.append(UsageRow.project_id == project)
    if start is not None:
        out.append(UsageRow.created_at >= start)
    if end is not None:
        out.append(UsageRow.created_at < end)
    return out


def _resolve(done: Future[None] | None, error: BaseException | None) -> None:
    # The waiter may have been cancelled (client gone); the write happened anyway.
    if done is None or not done.set_running_or_notify_cancel():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
