"""The whole HTTP stack in-process, on the fake runner: the app, serving, tenancy with its
own SQLite ledger, and the engine (its thread started or not). Tests talk to it through
``httpx.ASGITransport``: no socket, no model, milliseconds per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
from starlette.testclient import TestClient

from tokenmill.api.app import create_app
from tokenmill.batches.store import BatchStore
from tokenmill.config import EngineConfig
from tokenmill.engine.front import AsyncEngine
from tokenmill.runner.base import ModelRunner
from tokenmill.runner.fake import FakeRunner
from tokenmill.runner.faults import FaultInjector
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ModelRegistry, ServedModels
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured import GrammarCompiler, make_tokenizer
from tokenmill.tenancy.auth import StaticKeys
from tokenmill.tenancy.db import open_database
from tokenmill.tenancy.keys import KeyStore
from tokenmill.tenancy.ledger import Ledger
from tokenmill.tenancy.limits import Limiter, Limits
from tokenmill.tenancy.prices import PriceList
from tokenmill.tenancy.schema import UsageRow
from tokenmill.tenancy.service import Tenancy

ADMIN_KEY = "admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "fake"
BASE_URL = "http://testserver"


class AppStack:
    """One in-process server. ``start=False`` leaves the engine thread off, so requests wait
    (for tests of queues and timeouts)."""

    def __init__(
        self,
        tmp: Path,
        start: bool = True,
        runner: FakeRunner | None = None,
        max_num_seqs: int = 1,
        max_queue: int = 0,
        flex_timeout: float = 1.0,
        max_body_bytes: int = 1 << 20,
        api_keys: tuple[str, ...] = (ADMIN_KEY,),
        cors_origins: tuple[str, ...] = (),
        more_models: dict[str, FakeRunner] | None = None,
        aliases: dict[str, tuple[str, ...]] | None = None,
        model_limits: dict[str, Limits] | None = None,
        prices: PriceList | None = None,
        limiter: Limiter | None = None,
        db_name: str = "t.db",
        metrics_public: bool = False,
        log_content: bool = False,
    ) -> None:
        self.runner = runner or FakeRunner()
        self.faults = FaultInjector(self.runner)
        config = EngineConfig(max_num_seqs=max_num_seqs, max_batch_tokens=64, max_queue=max_queue)
        names = aliases or {}
        ctx = _context(MODEL, self.faults, config, names.get(MODEL, ()), self.faults)
        self.engine = ctx.engine
        # Further models, each with its own engine (one server, several models).
        self.contexts = [ctx] + [
            _context(name, r, config, names.get(name, ()))
            for name, r in (more_models or {}).items()
        ]
        self.db = open_database(str(tmp / db_name))
        self.ledger = Ledger(self.db, prices)
        self.keys = KeyStore(self.db)  # for tests that create projects and keys
        self.tenancy = Tenancy(
            self.keys,
            self.ledger,
            StaticKeys(api_keys),
            flex_timeout,
            model_limits=model_limits,
            limiter=limiter,
            batches=BatchStore(self.db, tmp / "data"),
        )
        served = ServedModels(self.contexts)
        self.app = create_app(
            served,
            self.tenancy,
            max_body_bytes,
            cors_origins=cors_origins,
            metrics_public=metrics_public,
            log_content=log_content,
        )
        self.started = start

    async def client(
        self, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        """Start what should run, yield a client, and shut everything down after."""
        self.open()
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app),
                base_url=BASE_URL,
                headers=ADMIN if headers is None else headers,
            ) as c:
                yield c
        finally:
            self.close()

    def open(self) -> None:
        """Start the ledger writer, and the engine thread unless ``start=False``."""
        self.ledger.start()
        if self.started:
            for ctx in self.contexts:
                ctx.engine.start()

    def sync_client(self, headers: dict[str, str] | None = None) -> TestClient:
        """A blocking client (Starlette's, an ``httpx.Client``: the official ``openai``
        client takes it as ``http_client``); call ``open()`` first."""
        return TestClient(
            self.app, base_url=BASE_URL, headers=ADMIN if headers is None else headers
        )

    def official(self, key: str = ADMIN_KEY, project: str | None = None) -> openai.OpenAI:
        """The official client, blocking, with ``key`` (and ``ai_project_id``); call ``open()``
        first."""
        return openai.OpenAI(
            base_url=f"{BASE_URL}/v1",
            api_key=key,
            max_retries=0,
            http_client=self.sync_client(headers={}),
            default_query={"ai_project_id": project} if project else None,
        )

    def official_async(self, key: str = ADMIN_KEY) -> openai.AsyncOpenAI:
        """The official async client, for concurrent requests (responses arrive whole: ASGI
        transport does not stream)."""
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL)
        return openai.AsyncOpenAI(
            base_url=f"{BASE_URL}/v1", api_key=key, max_retries=0, http_client=http
        )

    def start_engine(self) -> None:
        for ctx in self.contexts:
            ctx.engine.start()
        self.started = True

    async def rows(self) -> list[UsageRow]:
        await self.ledger.flush()
        return self.ledger.rows()

    def close(self) -> None:
        if self.started:
            for ctx in self.contexts:
                ctx.engine.stop()
            self.started = False
        self.ledger.stop()
        self.db.dispose()


def _context(
    name: str,
    runner: ModelRunner,
    config: EngineConfig,
    aliases: tuple[str, ...] = (),
    faults: FaultInjector | None = None,
) -> ServingContext:
    """One served fake model with its own engine (not started)."""
    grammars = GrammarCompiler(make_tokenizer(runner.info))
    models = ModelRegistry(name, aliases, context_length=runner.info.n_ctx)
    engine = AsyncEngine(runner, config)
    return ServingContext(engine, models, ChatTemplate(None, "", ""), runner, grammars, faults)
