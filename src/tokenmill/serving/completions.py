"""``POST /v1/completions``: one or many prompts, each continued ``n`` times.

Choices are indexed prompt-major (``prompt_index * n + choice``), as OpenAI does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from tokenmill.engine.messages import EngineRequest, PromptLogprob
from tokenmill.protocol.errors import APIError, BadRequest
from tokenmill.protocol.requests import CompletionRequest
from tokenmill.serving.common import (
    ChoiceState,
    RequestMeter,
    ServingContext,
    admit,
    check_token_ids,
    new_id,
    now,
    run_all,
    sampling_params,
    service_tier,
    usage,
)
from tokenmill.serving.logprobs import legacy_logprobs, prompt_logprobs_json
from tokenmill.serving.sse import DONE, ResponseMeta, event
from tokenmill.serving.structured import resolve_constraint

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # what echo shows


def normalize_prompts(req: CompletionRequest, ctx: ServingContext) -> list[Prompt]:
    """A string, a list of strings, a list of token ids or a list of token-id lists."""
    info = ctx.info
    raw = req.prompt
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif all(isinstance(p, int) for p in raw):
        items = [list(raw)]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            param = "prompt" if isinstance(raw, str) else f"prompt[{i}]"
            prompts.append(_text_prompt(item, ctx, param))
        else:
            check_token_ids(item, info.vocab_size, "prompt")
            prompts.append(Prompt(item, info.detokenize(item)))
    return prompts


def _text_prompt(text: str, ctx: ServingContext, param: str) -> Prompt:
    info = ctx.info
    ids = ctx.tokenizer.tokenize(text, add_special=info.add_bos, parse_special=True)
    if ids:
        return Prompt(ids, text)
    # An empty prompt continues from the beginning-of-text token alone, as OpenAI's does: the
    # model writes as if a new document started. It is exactly the token prompt [bos_id], so
    # echo shows that token, logprobs list it, and usage counts it (the engine read it).
    if info.bos_id is None:
        raise BadRequest(
            "The prompt is empty, and this model has no beginning-of-text token to start from",
            param,
        )
    ids = [info.bos_id]
    return Prompt(ids, info.detokenize(ids))


async def create_completion(
    req: CompletionRequest,
    ctx: ServingContext,
    meter: RequestMeter | None = None,
    model: str | None = None,
) -> dict[str, Any] | AsyncGenerator[str, None]:
    """``model``: the id to answer with, when the caller has resolved ``req.model`` already."""
    model = model or ctx.models.resolve(req.model)
    resolved = await resolve_constraint(req, ctx)
    prompts = normalize_prompts(req, ctx)
    # Echo with logprobs needs the prompt's own logprobs from the engine.
    engine_prompt_logprobs = req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        engine_prompt_logprobs = max(req.logprobs, req.prompt_logprobs or 0)
    meta = ResponseMeta(
        id=new_id("cmpl"),
        object="text_completion",
        created=now(),
        model=model,
        system_fingerprint=ctx.info.fingerprint,
        service_tier=service_tier(req),
        include_usage=bool(req.stream and req.include_usage),
    )
    ereqs = []
    for i, p in enumerate(prompts):
        params = sampling_params(
            req,
            ctx,
            len(p.ids),
            max_tokens=req.max_tokens,
            default_max_tokens=DEFAULT_MAX_TOKENS,
            logprobs=req.logprobs,
            prompt_logprobs=engine_prompt_logprobs,
            prompt_param="prompt",
        )
        ereqs.append(EngineRequest(f"{meta.id}-{i}", p.ids, params, grammar=resolved.grammar))
    meta, ereqs = await admit(meter, meta, ereqs)
    run = _LegacyCompletion(req, ctx, meta, prompts, ereqs, meter)
    if req.stream:
        return run.stream()
    return await run.full()


class _LegacyCompletion:
    """One completion request in flight: its prompts, engine requests and response shape."""

    def __init__(
        self,
        req: CompletionRequest,
        ctx: ServingContext,
        meta: ResponseMeta,
        prompts: list[Prompt],
        ereqs: list[EngineRequest],
        meter: RequestMeter | None = None,
    ) -> None:
        self.req, self.ctx, self.meta, self.prompts, self.ereqs = req, ctx, meta, prompts, ereqs
        self.meter = meter
        self.n = req.n or 1
        self.prompt_lp: list[list[PromptLogprob | None] | None] = [None] * len(prompts)
        self.cached = [0] * len(prompts)
        self.prompt_tokens = sum(len(p.ids) for p in prompts)

    async def full(self) -> dict[str, Any]:
        choices = [ChoiceState() for _ in range(len(self.prompts) * self.n)]
        async for prompt_index, out in run_all(self.ctx.engine, self.ereqs, self.meter):
            self.prompt_lp[prompt_index] = out.prompt_logprobs or self.prompt_lp[prompt_index]
            self.cached[prompt_index] = out.num_cached_tokens
            for d in out.deltas:
                choices[prompt_index * self.n + d.index].add(d)
        body_choices = []
        for idx, c in enumerate(choices):
            prompt_index = idx // self.n
            prefix = self.prompts[prompt_index].text if self.req.echo else ""
            choice: dict[str, Any] = {
                "index": idx,
                "text": prefix + "".join(c.text),
                "logprobs": self._logprobs(prompt_index, c.logprobs, first=True),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            if self.req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(
                    self.prompt_lp[prompt_index], self.ctx.info
                )
            body_choices.append(choice)
        completion_tokens = sum(c.num_tokens for c in choices)
        return self.meta.envelope(
            choices=body_choices,
            usage=usage(self.prompt_tokens, completion_tokens, sum(self.cached)),
        )

    def _logprobs(
        self, prompt_index: int, lps: list[Any], first: bool, offset: int | None = None
    ) -> dict[str, Any] | None:
        """Legacy logprobs; the echoed prompt's tokens lead the first message of a choice.

        ``offset`` is where this message's text starts in the choice's whole text (streams
        pass the length already sent); by default, the start of the completion.
        """
        if self.req.logprobs is None:
            return None
        prompt = self.prompts[prompt_index]
        echo = self.req.echo and first
        if offset is None:
            offset = 0 if self.req.echo else len(prompt.text)
        return legacy_logprobs(
            self.prompt_lp[prompt_index] if echo else None, prompt.ids, lps, self.ctx.info, offset
        )

    async def stream(self) -> AsyncGenerator[str, None]:
        completion_tokens = 0
        started: set[int] = set()
        sent: dict[int, int] = {}  # characters of each choice's text so far (for text_offset)
        try:
            async for prompt_index, out in run_all(self.ctx.engine, self.ereqs, self.meter):
                self.prompt_lp[prompt_index] = out.prompt_logprobs or self.prompt_lp[prompt_index]
                self.cached[prompt_index] = out.num_cached_tokens
                for d in out.deltas:
                    idx = prompt_index * self.n + d.index
                    completion_tokens += len(d.token_ids)
                    first = idx not in started
                    started.add(idx)
                    echo = self.prompts[prompt_index].text if self.req.echo and first else ""
                    if first:
                        sent[idx] = 0 if self.req.echo else len(self.prompts[prompt_index].text)
                    offset = sent[idx]
                    sent[idx] += len(echo) + len(d.text)
                    choice: dict[str, Any] = {
                        "index": idx,
                        "text": echo + d.text,
                        "logprobs": self._logprobs(prompt_index, d.logprobs, first, offset),
                        "finish_reason": d.finish_reason,
                    }
                    if d.finish_reason:
                        choice["stop_reason"] = d.stop_reason
                    if first and self.req.prompt_logprobs is not None:
                        choice["prompt_logprobs"] = prompt_logprobs_json(
                            self.prompt_lp[prompt_index], self.ctx.info
                        )
                    yield self.meta.chunk_event([choice])
            if self.meta.include_usage:
                yield event(
                    self.meta.envelope(
                        choices=[],
                        usage=usage(self.prompt_tokens, completion_tokens, sum(self.cached)),
                    )
                )
        except APIError as e:
            yield event(e.body())
        yield DONE
