"""``POST /v1/chat/completions``: messages -> prompt -> engine -> message or chunk stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from tokenmill.engine.messages import EngineRequest, PromptLogprob
from tokenmill.protocol.errors import APIError
from tokenmill.protocol.requests import ChatCompletionRequest
from tokenmill.serving.common import (
    ChoiceState,
    ServingContext,
    new_id,
    now,
    run_all,
    sampling_params,
    service_tier,
    usage,
)
from tokenmill.serving.logprobs import chat_logprobs, prompt_logprobs_json
from tokenmill.serving.sse import DONE, ResponseMeta, event


def render_prompt(req: ChatCompletionRequest, ctx: ServingContext) -> list[int]:
    """Render the conversation with the model's chat template and tokenize it."""
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text,
        }
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        messages.append(msg)
    text = ctx.template.render(
        messages, req.add_generation_prompt, **(req.chat_template_kwargs or {})
    )
    info = ctx.info
    bos = ctx.template.bos_token
    add_bos = info.add_bos and not (bos and text.startswith(bos))
    return ctx.engine.runner.tokenize(text, add_special=add_bos, parse_special=True)


async def create_chat_completion(
    req: ChatCompletionRequest, ctx: ServingContext
) -> dict[str, Any] | AsyncIterator[str]:
    model = ctx.models.resolve(req.model)
    prompt_ids = render_prompt(req, ctx)
    params = sampling_params(
        req,
        ctx,
        len(prompt_ids),
        max_tokens=req.max_output,
        default_max_tokens=None,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        prompt_logprobs=req.prompt_logprobs,
        prompt_param="messages",
    )
    meta = ResponseMeta(
        id=new_id("chatcmpl"),
        object="chat.completion.chunk" if req.stream else "chat.completion",
        created=now(),
        model=model,
        system_fingerprint=ctx.info.fingerprint,
        service_tier=service_tier(req),
        include_usage=bool(req.stream and req.include_usage),
    )
    ereq = EngineRequest(meta.id, prompt_ids, params)
    if req.stream:
        return _stream(ereq, meta, ctx)
    return await _full(ereq, meta, ctx)


async def _full(ereq: EngineRequest, meta: ResponseMeta, ctx: ServingContext) -> dict[str, Any]:
    choices = [ChoiceState() for _ in range(ereq.params.n)]
    prompt_lp: list[PromptLogprob | None] | None = None
    cached = 0
    async for _, out in run_all(ctx.engine, [ereq]):
        prompt_lp = out.prompt_logprobs or prompt_lp
        cached = out.num_cached_tokens
        for d in out.deltas:
            choices[d.index].add(d)
    want_lp = ereq.params.logprobs is not None
    body = meta.envelope(
        choices=[
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": "".join(c.text),
                    "tool_calls": [],
                    "function_call": None,
                    "refusal": None,
                },
                "logprobs": chat_logprobs(c.logprobs, ctx.info) if want_lp else None,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            for i, c in enumerate(choices)
        ],
        usage=usage(len(ereq.prompt_token_ids), sum(c.num_tokens for c in choices), cached),
    )
    if ereq.params.prompt_logprobs is not None:
        body["prompt_logprobs"] = prompt_logprobs_json(prompt_lp, ctx.info)
    return body


async def _stream(
    ereq: EngineRequest, meta: ResponseMeta, ctx: ServingContext
) -> AsyncIterator[str]:
    want_lp = ereq.params.logprobs is not None
    completion_tokens = 0
    cached = 0
    try:
        for i in range(ereq.params.n):
            yield event(_chunk(meta, i, {"role": "assistant", "content": ""}))
        async for _, out in run_all(ctx.engine, [ereq]):
            extra: dict[str, Any] = {}
            if out.prompt_logprobs is not None and ereq.params.prompt_logprobs is not None:
                extra["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs, ctx.info)
            cached = out.num_cached_tokens
            for d in out.deltas:
                completion_tokens += len(d.token_ids)
                if d.text or d.logprobs:
                    lp = chat_logprobs(d.logprobs, ctx.info) if want_lp else None
                    yield event(_chunk(meta, d.index, {"content": d.text}, logprobs=lp, **extra))
                    extra = {}
                if d.finish_reason:
                    yield event(_chunk(meta, d.index, {}, d.finish_reason, d.stop_reason, **extra))
                    extra = {}
        if meta.include_usage:
            yield event(
                meta.envelope(
                    choices=[],
                    usage=usage(len(ereq.prompt_token_ids), completion_tokens, cached),
                )
            )
    except APIError as e:
        yield event(e.body())
    yield DONE


def _chunk(
    meta: ResponseMeta,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    stop_reason: str | int | None = None,
    logprobs: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
    if finish_reason:
        choice["stop_reason"] = stop_reason
    return meta.envelope(choices=[choice], **extra)
