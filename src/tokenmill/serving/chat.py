"""``POST /v1/chat/completions``: messages -> prompt -> engine -> message or chunk stream."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from tokenmill.engine.messages import EngineRequest, PromptLogprob
from tokenmill.protocol.errors import APIError
from tokenmill.protocol.requests import ChatCompletionRequest
from tokenmill.serving.common import (
    ChoiceState,
    RequestMeter,
    ServingContext,
    admit,
    new_id,
    now,
    run_all,
    sampling_params,
    service_tier,
    usage,
)
from tokenmill.serving.logprobs import chat_logprobs, prompt_logprobs_json
from tokenmill.serving.sse import DONE, ResponseMeta, event
from tokenmill.serving.structured import (
    DeltaShaper,
    ResolvedConstraint,
    message_fields,
    resolve_constraint,
    template_messages,
)


def render_prompt(
    req: ChatCompletionRequest, resolved: ResolvedConstraint, ctx: ServingContext
) -> list[int]:
    """Render the conversation (and any tools) with the model's chat template; tokenize."""
    messages, extra = template_messages(req, resolved, ctx.template.knows_tools)
    text = ctx.template.render(
        messages, req.add_generation_prompt, **extra, **(req.chat_template_kwargs or {})
    )
    info = ctx.info
    bos = ctx.template.bos_token
    add_bos = info.add_bos and not (bos and text.startswith(bos))
    return ctx.tokenizer.tokenize(text, add_special=add_bos, parse_special=True)


async def create_chat_completion(
    req: ChatCompletionRequest,
    ctx: ServingContext,
    meter: RequestMeter | None = None,
    model: str | None = None,
) -> dict[str, Any] | AsyncGenerator[str, None]:
    """``model``: the id to answer with, when the caller has resolved ``req.model`` already."""
    model = model or ctx.models.resolve(req.model)
    resolved = await resolve_constraint(req, ctx)
    prompt_ids = render_prompt(req, resolved, ctx)
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
    ereq = EngineRequest(meta.id, prompt_ids, params, grammar=resolved.grammar)
    meta, [ereq] = await admit(meter, meta, [ereq])
    if req.stream:
        return _stream(ereq, meta, ctx, resolved, meter)
    return await _full(ereq, meta, ctx, resolved, meter)


async def _full(
    ereq: EngineRequest,
    meta: ResponseMeta,
    ctx: ServingContext,
    resolved: ResolvedConstraint,
    meter: RequestMeter | None,
) -> dict[str, Any]:
    choices = [ChoiceState() for _ in range(ereq.params.n)]
    prompt_lp: list[PromptLogprob | None] | None = None
    cached = 0
    async for _, out in run_all(ctx.engine, [ereq], meter):
        prompt_lp = out.prompt_logprobs or prompt_lp
        cached = out.num_cached_tokens
        for d in out.deltas:
            choices[d.index].add(d)
    want_lp = ereq.params.logprobs is not None
    body_choices = []
    for i, c in enumerate(choices):
        fields, finish_reason = message_fields("".join(c.text), resolved, c.finish_reason)
        body_choices.append(
            {
                "index": i,
                "message": {"role": "assistant", **fields, "refusal": None},
                "logprobs": chat_logprobs(c.logprobs, ctx.info) if want_lp else None,
                "finish_reason": finish_reason,
                "stop_reason": c.stop_reason,
            }
        )
    body = meta.envelope(
        choices=body_choices,
        usage=usage(len(ereq.prompt_token_ids), sum(c.num_tokens for c in choices), cached),
    )
    if ereq.params.prompt_logprobs is not None:
        body["prompt_logprobs"] = prompt_logprobs_json(prompt_lp, ctx.info)
    return body


async def _stream(
    ereq: EngineRequest,
    meta: ResponseMeta,
    ctx: ServingContext,
    resolved: ResolvedConstraint,
    meter: RequestMeter | None,
) -> AsyncGenerator[str, None]:
    want_lp = ereq.params.logprobs is not None
    completion_tokens = 0
    cached = 0
    shapers = [DeltaShaper(resolved) for _ in range(ereq.params.n)]
    try:
        for i in range(ereq.params.n):
            yield _chunk(meta, i, {"role": "assistant", "content": ""})
        async for _, out in run_all(ctx.engine, [ereq], meter):
            extra: dict[str, Any] = {}
            if out.prompt_logprobs is not None and ereq.params.prompt_logprobs is not None:
                extra["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs, ctx.info)
            cached = out.num_cached_tokens
            for d in out.deltas:
                completion_tokens += len(d.token_ids)
                shaper = shapers[d.index]
                deltas = shaper.feed(d.text)
                finish_reason = d.finish_reason
                if d.finish_reason:
                    held, finish_reason = shaper.finish(d.finish_reason)
                    deltas += held
                if d.logprobs and want_lp and not deltas:
                    deltas = [{}]  # logprobs of tokens whose text is still held back
                for j, delta in enumerate(deltas):
                    lp = chat_logprobs(d.logprobs, ctx.info) if want_lp and j == 0 else None
                    yield _chunk(meta, d.index, delta, logprobs=lp, **extra)
                    extra = {}
                if finish_reason:
                    yield _chunk(meta, d.index, {}, finish_reason, d.stop_reason, **extra)
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
) -> str:
    """One chunk's SSE event."""
    choice: dict[str, Any] = {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
    if finish_reason:
        choice["stop_reason"] = stop_reason
    return meta.chunk_event([choice], **extra)
