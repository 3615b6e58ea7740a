"""The Files and Batches endpoints (OpenAI's shapes): upload a JSONL file of requests, start
a batch on it, follow it, cancel it, download its output and error files. The work itself
is ``batches.worker``'s; these only read and write the store."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from tokenmill.api.routes import authenticate, parse_body
from tokenmill.batches.jsonl import ENDPOINTS
from tokenmill.batches.store import BatchStore, batch_object, file_object
from tokenmill.batches.worker import BatchWorker
from tokenmill.protocol.errors import BadRequest
from tokenmill.tenancy.service import Principal, Tenancy

MAX_LIST = 100


class BatchCreate(BaseModel):
    """``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"]
    # OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        dict[
            Annotated[str, StringConstraints(max_length=64)],
            Annotated[str, StringConstraints(max_length=512)],
        ]
        | None
    ) = Field(default=None, max_length=16)


def add_batch_routes(
    router: APIRouter, tenancy: Tenancy, store: BatchStore, worker: BatchWorker
) -> None:
    routes = _BatchRoutes(tenancy, store, worker)
    router.add_api_route("/v1/files", routes.upload, methods=["POST"])
    router.add_api_route("/v1/files", routes.list_files, methods=["GET"])
    router.add_api_route("/v1/files/{file_id}", routes.get_file, methods=["GET"])
    router.add_api_route("/v1/files/{file_id}", routes.delete_file, methods=["DELETE"])
    router.add_api_route("/v1/files/{file_id}/content", routes.content, methods=["GET"])
    router.add_api_route("/v1/batches", routes.create, methods=["POST"])
    router.add_api_route("/v1/batches", routes.list_batches, methods=["GET"])
    router.add_api_route("/v1/batches/{batch_id}", routes.get_batch, methods=["GET"])
    router.add_api_route("/v1/batches/{batch_id}/cancel", routes.cancel, methods=["POST"])


class _BatchRoutes:
    def __init__(self, tenancy: Tenancy, store: BatchStore, worker: BatchWorker) -> None:
        self.tenancy, self.store, self.worker = tenancy, store, worker

    async def authenticate(self, request: Request) -> Principal:
        principal = await authenticate(self.tenancy, request)
        self.worker.ensure_running()  # a server whose worker has not started yet (tests)
        return principal

    # -- files -----------------------------------------------------------------------------

    async def upload(self, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest("Upload the file as multipart/form-data", "file")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except HTTPException as e:  # Starlette's: the multipart body does not parse
            raise BadRequest(f"Invalid multipart body: {e.detail}", "file") from None
        try:
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose != "batch":
                raise BadRequest(
                    f"Invalid purpose {purpose!r}: this server takes files for 'batch'",
                    "purpose",
                )
            if not isinstance(upload, UploadFile):
                raise BadRequest("A file is required", "file")
            data = await upload.read()
            name = upload.filename or "upload.jsonl"
        finally:
            await form.close()  # the upload's temporary file
        if not data:
            raise BadRequest("The file is empty", "file")
        row = await asyncio.to_thread(self.store.add_file, principal.project, "batch", name, data)
        return file_object(row)

    async def list_files(self, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        limit, after = _page_params(request, default=10_000)
        purpose = request.query_params.get("purpose") or None
        rows, more = await asyncio.to_thread(
            self.store.list_files, principal.project, purpose, limit, after
        )
        return _listing([file_object(r) for r in rows], more)

    async def get_file(self, file_id: str, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        return file_object(await asyncio.to_thread(self.store.get_file, principal.project, file_id))

    async def delete_file(self, file_id: str, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        await asyncio.to_thread(self.store.delete_file, principal.project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    async def content(self, file_id: str, request: Request) -> Response:
        principal = await self.authenticate(request)

        def read() -> bytes:
            return self.store.read(self.store.get_file(principal.project, file_id))

        return Response(await asyncio.to_thread(read), media_type="application/jsonl")

    # -- batches ---------------------------------------------------------------------------

    async def create(self, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        req = await parse_body(request, BatchCreate)
        assert req.endpoint in ENDPOINTS
        row = await asyncio.to_thread(
            self.store.create_batch, principal.project, principal.caller.key_id,
            req.input_file_id, req.endpoint, req.completion_window, req.metadata,
        )  # fmt: skip
        self.worker.wake()
        return batch_object(row)

    async def list_batches(self, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        limit, after = _page_params(request, default=20)
        rows, more = await asyncio.to_thread(
            self.store.list_batches, principal.project, limit, after
        )
        return _listing([batch_object(r) for r in rows], more)

    async def get_batch(self, batch_id: str, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        row = await asyncio.to_thread(self.store.get_batch, principal.project, batch_id)
        return batch_object(row)

    async def cancel(self, batch_id: str, request: Request) -> dict[str, Any]:
        principal = await self.authenticate(request)
        row = await asyncio.to_thread(self.store.cancel, principal.project, batch_id)
        self.worker.wake(cancelled=batch_id)
        return batch_object(row)


def _page_params(request: Request, default: int) -> tuple[int, str | None]:
    q = request.query_params
    raw = q.get("limit")
    try:
        limit = default if raw in (None, "") else int(raw)
    except ValueError:
        raise BadRequest("limit must be an integer", "limit") from None
    if not 1 <= limit <= max(default, MAX_LIST):
        raise BadRequest(f"limit must be between 1 and {max(default, MAX_LIST)}", "limit")
    return limit, q.get("after") or None


def _listing(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }
