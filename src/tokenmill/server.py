"""``tokenmill serve``: listen at once, load the model, start the engine thread, and shut
down gracefully.

The HTTP server starts before the model loads, so probes can tell "loading" from "dead".
On SIGTERM (or SIGINT) the server drains: new requests get a 503, running ones may finish
for ``shutdown_timeout`` seconds, then the rest end with an error event; every ledger row is
finalized and the process exits 0. A second signal skips the wait. If the engine thread
dies, the process exits with ``EXIT_ENGINE_DIED`` for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tokenmill import logs
from tokenmill.api.app import attach, create_app
from tokenmill.api.lifecycle import Lifecycle, Phase
from tokenmill.batches.store import BatchStore
from tokenmill.config import ModelConfig, ServeConfig
from tokenmill.engine.client import EngineClient
from tokenmill.engine.front import AsyncEngine
from tokenmill.protocol.errors import SHUTTING_DOWN
from tokenmill.runner.base import ModelInfo, ModelRunner, Tokenizer
from tokenmill.runner.faults import FaultInjector
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ModelRegistry, ServedModels
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured import GrammarCompiler, make_tokenizer
from tokenmill.tenancy.auth import StaticKeys
from tokenmill.tenancy.db import data_path, database_url, open_database, redact
from tokenmill.tenancy.keys import KeyStore
from tokenmill.tenancy.ledger import Ledger
from tokenmill.tenancy.limits import Limits
from tokenmill.tenancy.prices import Price, PriceList
from tokenmill.tenancy.service import Tenancy

log = logging.getLogger("tokenmill")

EXIT_ENGINE_DIED = 70  # EX_SOFTWARE: an internal error a restart may cure
EXIT_LOAD_FAILED = 1
# After the grace period, ended streams get this long to send their error event.
FAIL_GRACE = 5.0


def build_models(config: ServeConfig) -> tuple[ServedModels, list[AsyncEngine]]:
    """Load every model, each with its own engine (not started)."""
    contexts, engines = [], []
    for model in config.models:
        ctx, engine = build_context(config, model)
        contexts.append(ctx)
        engines.append(engine)
    return ServedModels(contexts), engines


def load_runner(
    config: ServeConfig, model: ModelConfig
) -> tuple[ModelRunner, FaultInjector | None]:
    """Load ``model`` in llama.cpp with the process's kernels (wrapped for fault injection
    when the tests ask for it)."""
    from tokenmill.runner import kernels

    kernels.select(config.kernels)  # before llama_cpp is first imported, just below
    from tokenmill.runner.llama_cpp import LlamaRunner  # the only llama.cpp import

    llama = LlamaRunner(
        model.path,
        n_ctx=model.ctx_size,
        n_threads=model.n_threads,
        n_seq_max=model.engine.max_num_seqs,
        n_batch=model.engine.max_batch_tokens,
        kernels=config.kernels,
        flash_attn=config.flash_attn,
    )
    faults = FaultInjector(llama) if config.fault_injection else None
    return faults or llama, faults


def serving_context(
    model: ModelConfig,
    engine: EngineClient,
    info: ModelInfo,
    tokenizer: Tokenizer,
    faults: FaultInjector | None = None,
) -> ServingContext:
    """What the HTTP side needs to serve ``model`` on ``engine``: names, chat template,
    tokenizer and grammar compiler."""
    template = ChatTemplate(
        info.chat_template,
        bos_token=info.special_texts.get(info.bos_id, "") if info.bos_id is not None else "",
        eos_token=info.special_texts.get(info.eos_id, "") if info.eos_id is not None else "",
    )
    models = ModelRegistry(
        model.model_id, model.aliases, kernels=info.kernels, context_length=info.n_ctx
    )
    # llguidance tokenizes grammar literals the way the model does.
    grammars = GrammarCompiler(make_tokenizer(info, lambda s: tokenizer.tokenize(s, False, False)))
    return ServingContext(engine, models, template, tokenizer, grammars, faults)


def build_context(config: ServeConfig, model: ModelConfig) -> tuple[ServingContext, AsyncEngine]:
    if model.replicas > 1:
        log.warning(
            "model %s: replicas = %d needs --ray; serving one replica",
            model.model_id, model.replicas,
        )  # fmt: skip
    runner, faults = load_runner(config, model)
    engine = AsyncEngine(runner, model.engine)
    return serving_context(model, engine, runner.info, runner, faults), engine


def build_tenancy(config: ServeConfig, recover: bool = True) -> Tenancy:
    """Open the database, recover what a crash left pending (unless another process does:
    Ray ingress replicas share the database), and say who may call."""
    db = open_database(config.db)
    log.info("keys and usage in %s", redact(database_url(config.db)))
    ledger = Ledger(db, PriceList.load(config.prices).with_defaults(catalogue_prices(config)))
    interrupted = ledger.recover() if recover else 0
    if interrupted:
        log.warning("%d requests were cut short by a crash: marked interrupted", interrupted)
    store = KeyStore(db)
    static = StaticKeys(config.api_keys)
    if static.open and not store.has_keys():
        log.warning(
            "no API keys configured: the server accepts every request until a key is created "
            "(tokenmill keys create) or --api-key is given"
        )
    limits = {m.model_id: Limits(m.rpm, m.tpm) for m in config.models}
    limiter = None
    if config.redis:
        from tokenmill.tenancy.redis_limits import RedisRateLimiter

        limiter = RedisRateLimiter(config.redis)
        limiter.ping()  # unreachable: fail now, not at the first limited request
        log.info("rate limits in Redis at %s", redact(config.redis))
    batches = BatchStore(db, data_path(config.data_dir, config.db))
    if recover and batches.release_all():  # alone: whoever held a batch before is gone
        log.info("batches left running by the last server will resume")
    return Tenancy(
        store, ledger, static, config.flex_timeout,
        model_limits=limits, limiter=limiter, batches=batches,
    )  # fmt: skip


def catalogue_prices(config: ServeConfig) -> dict[str, Price]:
    """The prices the catalogue gives its models (the --prices file wins where it lists one)."""
    return {
        m.model_id: Price(
            input=m.price_prompt or 0.0,
            output=m.price_completion or 0.0,
            cached_input=m.price_cached_prompt,
        )
        for m in config.models
        if m.price_prompt is not None or m.price_completion is not None
    }


def serve(config: ServeConfig) -> int:
    logs.configure(config.log_level, config.log_format)
    lifecycle = Lifecycle(config.stall_timeout)
    app = create_app(
        None,
        None,
        config.max_body_bytes,
        config.max_header_bytes,
        config.cors_origins,
        lifecycle=lifecycle,
        metrics_public=config.metrics_public,
        log_content=config.log_content,
        max_file_bytes=config.max_file_bytes,
    )
    server = _Server(
        app,
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            # Our own drain has already waited for the requests; this bounds the rest.
            timeout_graceful_shutdown=int(FAIL_GRACE),
            # Guards h11's buffer (used without httptools); HeaderSizeLimit answers with a 431.
            h11_max_incomplete_event_size=max(2 * config.max_header_bytes, 64 * 1024),
        ),
        lifecycle,
        config.shutdown_timeout,
    )
    return asyncio.run(server.run_all(config))


class _Server(uvicorn.Server):
    """uvicorn, with our shutdown: signals start a drain instead of closing at once."""

    def __init__(
        self, app: FastAPI, config: uvicorn.Config, lifecycle: Lifecycle, grace: float
    ) -> None:
        super().__init__(config)
        self.app = app
        self.lifecycle = lifecycle
        self.grace = grace
        self.exit_code = 0
        self.engines: list[AsyncEngine] = []
        self._aio: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._drain_task: asyncio.Task[None] | None = None

    async def run_all(self, config: ServeConfig) -> int:
        self._aio = asyncio.get_running_loop()
        http = asyncio.create_task(self.serve())
        while not self.started and not http.done():
            await asyncio.sleep(0.05)
        if http.done():  # could not bind, most likely
            await http
            return EXIT_LOAD_FAILED
        tenancy: Tenancy | None = None
        try:
            served, engines = await asyncio.to_thread(build_models, config)
            tenancy = await asyncio.to_thread(build_tenancy, config)
            self._start(served, engines, tenancy)
        except Exception:
            log.exception("could not start serving %s", _names(config))
            self.exit_code = EXIT_LOAD_FAILED
            self.should_exit = True
        if self.exit_code == 0 and not self.should_exit:
            url = f"http://{config.host}:{config.port}/v1"
            print(f"tokenmill ready: {url} serving {_names(config)}", flush=True)
        try:
            await http
        finally:
            self.lifecycle.phase = Phase.STOPPED
            worker = getattr(self.app.state, "batch_worker", None)
            if worker is not None:  # if no drain stopped it (the engine died)
                await worker.stop()
            for engine in self.engines:
                await asyncio.to_thread(engine.stop)
            if tenancy is not None:
                finalize_ledger(tenancy.ledger)
        return self.exit_code

    def _start(self, served: ServedModels, engines: list[AsyncEngine], tenancy: Tenancy) -> None:
        self.engines = engines
        tenancy.ledger.start()
        for engine in self.engines:
            engine.loop.on_death = self._engine_died
            engine.start()
        attach(self.app, served, tenancy)  # now requests may come

    # -- signals and the drain (signal handlers run on the main thread, as the loop does) --

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._aio is not None:
            self._aio.call_soon_threadsafe(self._signalled, sig)
        else:
            super().handle_exit(sig, frame)

    def _signalled(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals == 1:
            log.info("%s: draining (up to %gs for running requests)", name, self.grace)
            self.lifecycle.drain()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(self.grace))
            return
        log.warning("%s again: ending every request now", name)
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(0.0))

    async def _drain(self, grace: float) -> None:
        self.lifecycle.drain()
        worker = getattr(self.app.state, "batch_worker", None)
        if worker is not None:  # batches give way first: their cut-off lines run again later
            await worker.stop()
        await self._wait_idle(grace)
        if self.lifecycle.in_flight and self.engines:
            log.warning("ending %d requests still running", self.lifecycle.in_flight)
            for engine in self.engines:
                engine.fail_all("The server is shutting down", SHUTTING_DOWN)
            await self._wait_idle(FAIL_GRACE)
        self.should_exit = True
        if grace == 0.0:
            self.force_exit = True

    async def _wait_idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.lifecycle.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _engine_died(self, reason: BaseException) -> None:
        """From the dying engine thread: exit so that a supervisor restarts us."""

        def die() -> None:
            log.critical("exiting: the engine thread died (%r)", reason)
            self.exit_code = EXIT_ENGINE_DIED
            self.lifecycle.drain()
            self.should_exit = True

        if self._aio is not None:
            self._aio.call_soon_threadsafe(die)


def _names(config: ServeConfig) -> str:
    return ", ".join(m.model_id for m in config.models)


def finalize_ledger(ledger: Ledger) -> None:
    """Write what is queued, then end any row still open (a request cut off without its
    meter closing) as interrupted: none may stay pending."""
    ledger.stop()
    left = ledger.recover()
    if left:
        log.warning("%d requests were still open at shutdown: marked interrupted", left)
