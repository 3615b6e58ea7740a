"""Running batches: one worker per server takes the oldest unfinished batch it can lease and
runs its lines through the same serving code as HTTP requests, at the ``batch`` tier (the
engine's lowest priority; half price; outside the key's RPM/TPM).

A line's result is appended to the batch's output or error file the moment it is known;
those files say what has run. A restarted server (or another one, once the lease has run
out) reads them back and runs only the lines missing from both, so no finished line runs
twice; a line cut off by the restart runs again (its cut-off ledger row ends
``interrupted``). Lines the server cannot take now (its queue is full, it is shutting down)
are retried, never recorded as failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tokenmill.api.errors import from_structured
from tokenmill.api.routes import validate_body
from tokenmill.batches import jsonl
from tokenmill.batches import store as st
from tokenmill.batches.store import BatchStore
from tokenmill.metrics import Metrics
from tokenmill.protocol.errors import APIError, BadRequest, NotFound, ServiceUnavailable
from tokenmill.protocol.requests import ChatCompletionRequest, CompletionRequest, GenerationFields
from tokenmill.serving.chat import create_chat_completion
from tokenmill.serving.common import EngineFailed, RequestMeter
from tokenmill.serving.completions import create_completion
from tokenmill.serving.models import ServedModels
from tokenmill.structured.errors import StructuredError
from tokenmill.tenancy.ledger import CANCELLED as ROW_CANCELLED
from tokenmill.tenancy.ledger import ERROR, FINISHED
from tokenmill.tenancy.schema import BatchRow
from tokenmill.tenancy.service import Principal, Tenancy
from tokenmill.tenancy.tiers import BATCH

log = logging.getLogger("tokenmill.batches")
ENDPOINTS: dict[str, tuple[str, type[GenerationFields], Callable[..., Awaitable[Any]]]] = {
    "/v1/chat/completions": ("chat", ChatCompletionRequest, create_chat_completion),
    "/v1/completions": ("completion", CompletionRequest, create_completion),
}
LEASE = 30.0  # seconds a worker holds a batch without renewing it
RETRY_AFTER = 1.0  # seconds before a line the server could not take is tried again
COUNTS_EVERY = 1.0  # seconds between writes of a running batch's request counts


class Retry(Exception):
    """The server could not take the line now; it has not run."""


class BatchWorker:
    """Runs batches, one at a time, each with up to ``concurrency`` lines in the engine."""

    def __init__(
        self,
        store: BatchStore,
        served: ServedModels,
        tenancy: Tenancy,
        metrics: Metrics,
        concurrency: int,
        poll: float = 2.0,
    ) -> None:
        self.store, self.served, self.tenancy, self.metrics = store, served, tenancy, metrics
        self.concurrency = max(concurrency, 1)
        self.poll = poll
        self.owner = f"worker_{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.cancelled: set[str] = set()

    # -- lifetime --------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the worker on the running event loop, unless it runs there already."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="batch-worker")

    async def stop(self) -> None:
        """Stop taking lines; lines running now are cut off and run again later."""
        task, self._task = self._task, None
        # Python 3.11's wait_for can swallow a cancel that meets a wake-up: cancel again.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    def wake(self, cancelled: str | None = None) -> None:
        """A batch was created (or ``cancelled``): look now rather than at the next poll."""
        if cancelled is not None:
            self.cancelled.add(cancelled)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                batch = await asyncio.to_thread(self.store.claim, self.owner, LEASE)
                if batch is not None:
                    await self._work(batch)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away, most likely: try again later
                log.exception("batch worker: could not work on a batch")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    # -- one batch -------------------------------------------------------------------------

    async def _work(self, batch: BatchRow) -> None:
        renewer = asyncio.create_task(self._renew(batch.id))
        try:
            lines = await self._lines(batch)
            if lines is not None:
                await _Run(self, batch, lines).run()
        finally:
            renewer.cancel()
            self.cancelled.discard(batch.id)

    async def _renew(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            await asyncio.to_thread(self.store.renew, batch_id, self.owner, LEASE)

    async def _lines(self, batch: BatchRow) -> list[jsonl.Line] | None:
        """The batch's requests (validating it first if it is new); None if it failed."""
        try:
            source = await asyncio.to_thread(
                lambda: self.store.read(self.store.get_file(batch.project_id, batch.input_file_id))
            )
            lines, errors = jsonl.parse(source, batch.endpoint)
        except NotFound:  # deleted before validation took it
            lines, errors = [], [jsonl.LineError(None, "file_not_found", "The input file is gone.")]
        if batch.status != st.VALIDATING:
            return lines
        if errors:
            log.info("batch %s failed validation: %s", batch.id, errors[0].message)
            await asyncio.to_thread(
                self.store.set, batch.id, only_from=st.VALIDATING, status=st.FAILED,
                failed_at=time.time(), errors_json=json.dumps([e.as_dict() for e in errors]),
                owner=None,
            )  # fmt: skip
            return None
        now = time.time()
        started = await asyncio.to_thread(
            self.store.set, batch.id, only_from=st.VALIDATING, status=st.IN_PROGRESS,
            in_progress_at=now, total=len(lines),
        )  # fmt: skip
        if started:
            batch.status, batch.in_progress_at, batch.total = st.IN_PROGRESS, now, len(lines)
        else:  # cancelled meanwhile
            batch.status = st.CANCELLING
        return lines

    # -- one line --------------------------------------------------------------------------

    async def run_line(self, batch: BatchRow, line: jsonl.Line) -> tuple[int, dict[str, Any]]:
        """The line's HTTP status and body, as the endpoint would have answered it; raises
        ``Retry`` when the server could not take it now."""
        kind, model, create = ENDPOINTS[batch.endpoint]
        try:
            req = validate_body(line.body, model)
            if req.stream:
                raise BadRequest("stream is not supported in a batch", "stream")
            ctx, served_as = self.served.resolve(req.model)
            principal = Principal(self.tenancy.caller_of(batch.key_id), batch.project_id)
            fields = {"batch_id": batch.id, "custom_id": line.custom_id}
            usage = self.tenancy.meter(
                principal, ctx.models.model_id, req.model, None, kind, req.user, fields,
                fixed_tier=BATCH,
            )  # fmt: skip
            meter = RequestMeter(usage, ctx.engine, self.metrics.request(ctx.models.model_id))
            return 200, await _metered(meter, create(req, ctx, meter, served_as))
        except ServiceUnavailable as e:  # queue full, shutting down, replica lost
            raise Retry(e.message) from e
        except APIError as e:
            return e.status_code, e.body()


async def _metered(meter: RequestMeter, work: Awaitable[Any]) -> dict[str, Any]:
    """Await a whole (not streamed) answer, closing the meter however it ends."""
    try:
        try:
            result = await work
        except StructuredError as e:
            raise from_structured(e) from e
    except asyncio.CancelledError:
        meter.close(ROW_CANCELLED)
        raise
    except BaseException:
        meter.close(ERROR)
        raise
    meter.close(FINISHED)
    assert isinstance(result, dict)
    return result


class _Run:
    """One batch's lines through to its end: completed, cancelled or expired."""

    def __init__(self, worker: BatchWorker, batch: BatchRow, lines: list[jsonl.Line]) -> None:
        self.worker, self.store, self.batch = worker, worker.store, batch
        self.output, self.errors = self.store.result_paths(batch.id)
        self.lines = lines
        self.completed = self.failed = 0
        self.seen: set[str] = set()  # custom ids recorded by this run
        self._counts_at = 0.0

    async def run(self) -> None:
        done = await asyncio.to_thread(self._recorded)
        todo = [line for line in self.lines if line.custom_id not in done]
        if todo and self.batch.status == st.IN_PROGRESS:
            log.info("batch %s: %d of %d requests to run", self.batch.id, len(todo),
                     len(self.lines))  # fmt: skip
            ended = await self._run_lines(todo)
        else:
            ended = self.batch.status if self.batch.status == st.CANCELLING else None
        await self._finish(ended)

    def _recorded(self) -> set[str]:
        """The custom ids already in the result files (a torn last line is cut off)."""
        done: set[str] = set()
        for path, failed in ((self.output, False), (self.errors, True)):
            for item in _read_lines(path):
                done.add(item["custom_id"])
                if failed:
                    self.failed += 1
                else:
                    self.completed += 1
        return done

    async def _run_lines(self, todo: list[jsonl.Line]) -> str | None:
        """Run ``todo``; the reason it stopped early (cancelling, expired) or None."""
        queue: asyncio.Queue[jsonl.Line] = asyncio.Queue()
        for line in todo:
            queue.put_nowait(line)
        stop = asyncio.Event()
        reason: list[str] = []

        async def runner() -> None:
            while not stop.is_set() and not queue.empty():
                line = queue.get_nowait()
                try:
                    status, body = await self.worker.run_line(self.batch, line)
                except Retry:
                    queue.put_nowait(line)
                    await asyncio.sleep(RETRY_AFTER)
                    continue
                except Exception:  # a bug: this line fails, the others go on
                    log.exception("batch %s: line %d failed", self.batch.id, line.number)
                    status, body = 500, EngineFailed("internal error").body()
                self._record(line, status, body)

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.2)
                if self.batch.id in self.worker.cancelled or await self._cancel_asked():
                    reason.append(st.CANCELLING)
                elif time.time() >= self.batch.expires_at:
                    reason.append(st.EXPIRED)
                else:
                    continue
                stop.set()
                return

        watcher = asyncio.ensure_future(watch())
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        work: asyncio.Future[Any] = asyncio.gather(
            *(runner() for _ in range(self.worker.concurrency))
        )
        try:
            await asyncio.wait({stopped, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # a stopped batch's running lines are aborted
            for task in (watcher, stopped, work):
                task.cancel()
            await asyncio.gather(watcher, stopped, work, return_exceptions=True)
        if reason and reason[0] == st.EXPIRED:
            for line in todo:
                if line.custom_id not in self.seen:
                    self._expire(line)
        return reason[0] if reason else None

    async def _cancel_asked(self) -> bool:
        """Every ``COUNTS_EVERY``: write the counts, and read back whether the batch is to be
        cancelled (by another server's API) and when it expires."""
        now = time.monotonic()
        if now - self._counts_at < COUNTS_EVERY:
            return False
        self._counts_at = now
        await asyncio.to_thread(
            self.store.set, self.batch.id, completed=self.completed, failed=self.failed
        )
        row = await asyncio.to_thread(self.store.get_batch, None, self.batch.id)
        self.batch.expires_at = row.expires_at
        return row.status == st.CANCELLING

    def _record(self, line: jsonl.Line, status: int, body: dict[str, Any]) -> None:
        item = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": body.get("id", ""), "body": body},
            "error": None,
        }
        ok = status == 200
        _append(self.output if ok else self.errors, item)
        self.seen.add(line.custom_id)
        if ok:
            self.completed += 1
        else:
            self.failed += 1

    def _expire(self, line: jsonl.Line) -> None:
        item = {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": line.custom_id,
            "response": None,
            "error": {"code": "batch_expired",
                      "message": "This request could not be executed before the completion "
                                 "window expired."},
        }  # fmt: skip
        _append(self.errors, item)
        self.failed += 1

    async def _finish(self, ended: str | None) -> None:
        """Output and error files become File objects; the batch gets its final status."""
        status, stamp = {
            None: (st.COMPLETED, "completed_at"),
            st.CANCELLING: (st.CANCELLED, "cancelled_at"),
            st.EXPIRED: (st.EXPIRED, "expired_at"),
        }[ended]
        now = time.time()
        if ended is None:
            await asyncio.to_thread(self.store.set, self.batch.id, status=st.FINALIZING,
                                    finalizing_at=now)  # fmt: skip
        await asyncio.to_thread(
            self.store.finish, self.batch, status, stamp, self.output, self.errors,
            self.completed, self.failed,
        )  # fmt: skip
        log.info("batch %s %s: %d completed, %d failed", self.batch.id, status,
                 self.completed, self.failed)  # fmt: skip


def _append(path: Path, item: dict[str, Any]) -> None:
    """One result line, flushed to the OS at once: a crash of the process keeps it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(item, separators=(",", ":")) + "\n")


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """A result file's lines; a last line without its newline (torn by a crash) is cut
    off the file, and its request runs again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(raw) for raw in data[:end].splitlines() if raw.strip()]
