"""``tokenmill serve``: load the model, start the engine thread, serve HTTP."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from tokenmill.api.app import create_app
from tokenmill.config import ServeConfig
from tokenmill.engine.front import AsyncEngine
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ModelRegistry
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured import GrammarCompiler, make_tokenizer
from tokenmill.tenancy.auth import StaticKeys
from tokenmill.tenancy.db import database_url, open_database, redact
from tokenmill.tenancy.keys import KeyStore
from tokenmill.tenancy.ledger import Ledger
from tokenmill.tenancy.prices import PriceList
from tokenmill.tenancy.service import Tenancy

log = logging.getLogger("tokenmill")


def build_context(config: ServeConfig) -> ServingContext:
    from tokenmill.runner.llama_cpp import LlamaRunner  # the only llama.cpp import

    runner = LlamaRunner(
        config.model_path,
        n_ctx=config.ctx_size,
        n_threads=config.n_threads,
        n_seq_max=config.max_num_seqs,
        n_batch=config.max_batch_tokens,
        flash_attn=config.flash_attn,
    )
    info = runner.info
    template = ChatTemplate(
        info.chat_template,
        bos_token=info.special_texts.get(info.bos_id, "") if info.bos_id is not None else "",
        eos_token=info.special_texts.get(info.eos_id, "") if info.eos_id is not None else "",
    )
    engine = AsyncEngine(
        runner,
        config.max_num_seqs,
        config.max_batch_tokens,
        config.prefix_cache,
        config.spec_tokens,
        config.spec_max_seqs,
        max_queue=config.max_queue,
    )
    models = ModelRegistry(config.model_id, config.aliases)
    # llguidance tokenizes grammar literals the way the model does.
    tokenizer = make_tokenizer(info, lambda s: runner.tokenize(s, False, False))
    grammars = GrammarCompiler(tokenizer)
    return ServingContext(engine, models, template, config.max_num_seqs, grammars)


def serve(config: ServeConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx = build_context(config)
    tenancy = build_tenancy(config, ctx.engine)
    app = create_app(
        ctx, tenancy, config.max_body_bytes, config.max_header_bytes, config.cors_origins
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            # Guards h11's buffer (used without httptools); HeaderSizeLimit answers with a 431.
            h11_max_incomplete_event_size=max(2 * config.max_header_bytes, 64 * 1024),
        )
    )
    ctx.engine.start()
    tenancy.ledger.start()
    try:
        asyncio.run(_run(server, config))
    finally:
        ctx.engine.stop()
        tenancy.ledger.stop()  # after the server: streams closed at shutdown are written too
    return 0


def build_tenancy(config: ServeConfig, engine: AsyncEngine) -> Tenancy:
    """Open the database, recover what a crash left pending, and say who may call."""
    db = open_database(config.db)
    log.info("keys and usage in %s", redact(database_url(config.db)))
    ledger = Ledger(db, PriceList.load(config.prices))
    interrupted = ledger.recover()
    if interrupted:
        log.warning("%d requests were cut short by a crash: marked interrupted", interrupted)
    store = KeyStore(db)
    static = StaticKeys(config.api_keys)
    if static.open and not store.has_keys():
        log.warning(
            "no API keys configured: the server accepts every request until a key is created "
            "(tokenmill keys create) or --api-key is given"
        )
    return Tenancy(store, ledger, static, engine, config.flex_timeout)


async def _run(server: uvicorn.Server, config: ServeConfig) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(
            f"tokenmill ready: http://{config.host}:{config.port}/v1 serving {config.model_id}",
            flush=True,
        )
    await task
