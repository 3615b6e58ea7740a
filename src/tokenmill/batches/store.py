"""Files and batches: rows in the database, bytes on disk under the data directory.

Uploaded files are written whole (to a temporary name, then renamed) before their row
exists, so a row always has its bytes. A batch's output and error files grow a line per
finished request while it runs (``batches/<id>/output.jsonl`` and ``errors.jsonl``); those
lines are the record of what has run, which is how a restarted server resumes a batch
without running a finished line again. Every method is blocking: call from a thread.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from tokenmill.protocol.errors import BadRequest, Conflict, NotFound
from tokenmill.tenancy.schema import BatchRow, FileRow

# Statuses (OpenAI's). A worker holds the unfinished ones.
VALIDATING, FAILED, IN_PROGRESS, FINALIZING = "validating", "failed", "in_progress", "finalizing"
COMPLETED, EXPIRED, CANCELLING, CANCELLED = "completed", "expired", "cancelling", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)
WINDOWS = {"24h": 24 * 3600.0}
PURPOSES = ("batch", "batch_output")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def batch_object(row: BatchRow) -> dict[str, Any]:
    def at(t: float | None) -> int | None:
        return None if t is None else int(t)

    errors = json.loads(row.errors_json) if row.errors_json else None
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": int(row.created_at),
        "in_progress_at": at(row.in_progress_at),
        "expires_at": at(row.expires_at),
        "finalizing_at": at(row.finalizing_at),
        "completed_at": at(row.completed_at),
        "failed_at": at(row.failed_at),
        "expired_at": at(row.expired_at),
        "cancelling_at": at(row.cancelling_at),
        "cancelled_at": at(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": json.loads(row.metadata_json) if row.metadata_json else None,
    }


class BatchStore:
    """Files and batches of every project (each call names the caller's project)."""

    def __init__(self, db: Engine, data_dir: Path) -> None:
        self.db = db
        self.data_dir = data_dir

    # -- files ---------------------------------------------------------------------------

    def add_file(self, project: str, purpose: str, filename: str, data: bytes) -> FileRow:
        file_id = new_id("file")
        rel = Path("files") / f"{file_id}.jsonl"
        path = self.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        row = FileRow(
            id=file_id, project_id=project, purpose=purpose, filename=filename[:256],
            bytes=len(data), path=str(rel), created_at=time.time(),
        )  # fmt: skip
        with Session(self.db, expire_on_commit=False) as s, s.begin():
            s.add(row)
        return row

    def get_file(self, project: str, file_id: str) -> FileRow:
        with Session(self.db, expire_on_commit=False) as s:
            row = s.get(FileRow, file_id)
        if row is None or row.project_id != project:
            raise NotFound(f"No such File object: {file_id}", "file_id")
        return row

    def read(self, row: FileRow) -> bytes:
        try:
            return (self.data_dir / row.path).read_bytes()
        except FileNotFoundError:
            return b""  # an output file no line has reached yet

    def list_files(self, project: str, purpose: str | None, limit: int, after: str | None
                   ) -> tuple[list[FileRow], bool]:  # fmt: skip
        stmt = select(FileRow).where(FileRow.project_id == project)
        if purpose:
            stmt = stmt.where(FileRow.purpose == purpose)
        return self._page(stmt, FileRow, project, limit, after)

    def delete_file(self, project: str, file_id: str) -> None:
        row = self.get_file(project, file_id)
        with Session(self.db) as s, s.begin():
            using = s.scalar(
                select(BatchRow.id).where(
                    BatchRow.status.in_(ACTIVE),
                    or_(
                        BatchRow.input_file_id == file_id,
                        BatchRow.output_file_id == file_id,
                        BatchRow.error_file_id == file_id,
                    ),
                )
            )
            if using is not None:
                raise Conflict(f"File {file_id} is in use by batch {using}, which has not ended.")
            s.delete(s.get(FileRow, file_id))
        (self.data_dir / row.path).unlink(missing_ok=True)

    # -- batches -------------------------------------------------------------------------

    def create_batch(
        self,
        project: str,
        key_id: str,
        input_file_id: str,
        endpoint: str,
        window: str,
        metadata: dict[str, str] | None,
    ) -> BatchRow:
        source = self.get_file(project, input_file_id)  # 404 if not the project's
        if source.purpose != "batch":
            raise BadRequest(
                f"File {input_file_id} has purpose {source.purpose!r}, not 'batch'.",
                "input_file_id",
            )
        now = time.time()
        row = BatchRow(
            id=new_id("batch"), project_id=project, key_id=key_id, endpoint=endpoint,
            input_file_id=input_file_id, completion_window=window, status=VALIDATING,
            metadata_json=json.dumps(metadata) if metadata else None,
            created_at=now, expires_at=now + WINDOWS[window],
            total=0, completed=0, failed=0,
        )  # fmt: skip
        with Session(self.db, expire_on_commit=False) as s, s.begin():
            s.add(row)
        return row

    def get_batch(self, project: str | None, batch_id: str) -> BatchRow:
        with Session(self.db, expire_on_commit=False) as s:
            row = s.get(BatchRow, batch_id)
        if row is None or (project is not None and row.project_id != project):
            raise NotFound(f"No such Batch object: {batch_id}", "batch_id")
        return row

    def list_batches(self, project: str, limit: int, after: str | None
                     ) -> tuple[list[BatchRow], bool]:  # fmt: skip
        stmt = select(BatchRow).where(BatchRow.project_id == project)
        return self._page(stmt, BatchRow, project, limit, after)

    def cancel(self, project: str, batch_id: str) -> BatchRow:
        """Ask for a batch to stop: ``cancelling`` until its worker has stopped it."""
        row = self.get_batch(project, batch_id)
        if row.status in (CANCELLING, CANCELLED):
            return row
        if row.status not in (VALIDATING, IN_PROGRESS):
            raise Conflict(f"Cannot cancel a batch with status {row.status!r}.")
        now = time.time()
        with Session(self.db) as s, s.begin():
            done = s.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.status.in_((VALIDATING, IN_PROGRESS)))
                .values(status=CANCELLING, cancelling_at=now)
            ).rowcount  # type: ignore[attr-defined]
        if not done:  # it moved on meanwhile: say where it is now
            return self.cancel(project, batch_id)
        return self.get_batch(project, batch_id)

    def set(self, batch_id: str, only_from: str | None = None, **values: Any) -> bool:
        """Update a batch's row (only if its status is ``only_from``, when given: a cancel
        from another server must not be overwritten); whether it was."""
        stmt = update(BatchRow).where(BatchRow.id == batch_id)
        if only_from is not None:
            stmt = stmt.where(BatchRow.status == only_from)
        with Session(self.db) as s, s.begin():
            return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]

    # -- leases: one worker per batch ------------------------------------------------------

    def claim(self, owner: str, lease: float) -> BatchRow | None:
        """The oldest unfinished batch no live worker holds, now held by ``owner``."""
        now = time.time()
        with Session(self.db, expire_on_commit=False) as s:
            candidates = s.scalars(
                select(BatchRow.id)
                .where(
                    BatchRow.status.in_(ACTIVE),
                    _free_for(owner, now),
                )
                .order_by(BatchRow.created_at)
                .limit(8)
            ).all()
        for batch_id in candidates:
            if self._take(batch_id, owner, now, lease):
                return self.get_batch(None, batch_id)
        return None

    def _take(self, batch_id: str, owner: str, now: float, lease: float) -> bool:
        with Session(self.db) as s, s.begin():
            return bool(
                s.execute(
                    update(BatchRow)
                    .where(
                        BatchRow.id == batch_id,
                        _free_for(owner, now),
                    )
                    .values(owner=owner, lease_until=now + lease)
                ).rowcount  # type: ignore[attr-defined]
            )

    def renew(self, batch_id: str, owner: str, lease: float) -> None:
        with Session(self.db) as s, s.begin():
            s.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.owner == owner)
                .values(lease_until=time.time() + lease)
            )

    def release_all(self) -> int:
        """Drop every lease (a server starting alone: whoever held them is gone)."""
        with Session(self.db) as s, s.begin():
            return int(
                s.execute(
                    update(BatchRow)
                    .where(BatchRow.owner.is_not(None))
                    .values(owner=None, lease_until=None)
                ).rowcount  # type: ignore[attr-defined]
            )

    # -- a batch's result files ------------------------------------------------------------

    def result_paths(self, batch_id: str) -> tuple[Path, Path]:
        folder = self.data_dir / "batches" / batch_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "output.jsonl", folder / "errors.jsonl"

    def finish(
        self,
        batch: BatchRow,
        status: str,
        stamp: str,
        output: Path,
        errors: Path,
        completed: int,
        failed: int,
    ) -> None:
        """The batch's end, in one transaction: its result files (those with a line) become
        File objects, and it gets ``status`` and its time in ``stamp``."""
        now = time.time()
        with Session(self.db) as s, s.begin():
            ids: list[str | None] = []
            for path in (output, errors):
                size = path.stat().st_size if path.exists() else 0
                if not size:
                    ids.append(None)
                    continue
                file_id = new_id("file")
                s.add(FileRow(
                    id=file_id, project_id=batch.project_id, purpose="batch_output",
                    filename=f"{batch.id}_{path.stem}.jsonl", bytes=size,
                    path=str(path.relative_to(self.data_dir)), created_at=now,
                ))  # fmt: skip
                ids.append(file_id)
            s.execute(
                update(BatchRow)
                .where(BatchRow.id == batch.id)
                .values(
                    status=status, output_file_id=ids[0], error_file_id=ids[1],
                    completed=completed, failed=failed, owner=None, lease_until=None,
                    **{stamp: now},
                )
            )  # fmt: skip

    def _page(
        self, stmt: Any, table: Any, project: str, limit: int,
        after: str | None,
    ) -> tuple[list[Any], bool]:  # fmt: skip
        """Newest first, ``limit`` at a time; ``after``: the last id of the previous page."""
        with Session(self.db, expire_on_commit=False) as s:
            if after:
                cursor = s.get(table, after)
                if cursor is None or cursor.project_id != project:
                    raise BadRequest(f"No such object to list after: {after}", "after")
                stmt = stmt.where(
                    or_(
                        table.created_at < cursor.created_at,
                        (table.created_at == cursor.created_at) & (table.id < cursor.id),
                    )
                )
            stmt = stmt.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)
            rows: Sequence[Any] = s.scalars(stmt).all()
        return list(rows[:limit]), len(rows) > limit


def _free_for(owner: str, now: float) -> Any:
    """Held by nobody, by a worker whose lease ran out, or by ``owner`` itself."""
    return or_(BatchRow.owner.is_(None), BatchRow.lease_until < now, BatchRow.owner == owner)
