"""``tokenmill serve``: load the model, start the engine thread, serve HTTP."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from tokenmill.api.app import create_app
from tokenmill.api.auth import StaticKeys
from tokenmill.config import ServeConfig
from tokenmill.engine.front import AsyncEngine
from tokenmill.serving.common import ServingContext
from tokenmill.serving.models import ModelRegistry
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured import GrammarCompiler, make_tokenizer

log = logging.getLogger("tokenmill")


def build_context(config: ServeConfig) -> ServingContext:
    from tokenmill.runner.llama_cpp import LlamaRunner  # the only llama.cpp import

    runner = LlamaRunner(
        config.model_path,
        n_ctx=config.ctx_size,
        n_threads=config.n_threads,
        n_seq_max=config.max_num_seqs,
        n_batch=config.max_batch_tokens,
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
    keys = StaticKeys(config.api_keys)
    if keys.open:
        log.warning("no API keys configured: the server accepts every request (use --api-key)")
    app = create_app(ctx, keys, config.max_body_bytes)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    ctx.engine.start()
    try:
        asyncio.run(_run(server, config))
    finally:
        ctx.engine.stop()
    return 0


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
