"""What chat and legacy completions share: parameters, limits, usage, merged engine streams."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenmill.engine.client import EngineClient
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, RequestOutput
from tokenmill.metrics import RequestTimer
from tokenmill.protocol.errors import (
    ENGINE_OVERLOADED,
    REPLICA_LOST,
    SHUTDOWN_RETRY_AFTER,
    SHUTTING_DOWN,
    APIError,
    BadRequest,
    ContextLengthExceeded,
    Overloaded,
    QueueTimeout,
    RateLimited,
    ServiceUnavailable,
)
from tokenmill.protocol.requests import GenerationFields
from tokenmill.runner.base import ModelInfo, Tokenizer
from tokenmill.runner.faults import FaultInjector
from tokenmill.sampling.params import SamplingParams
from tokenmill.sampling.sampler import TokenLogprob
from tokenmill.serving.models import ModelRegistry
from tokenmill.serving.sse import ResponseMeta
from tokenmill.serving.template import ChatTemplate
from tokenmill.structured.compiler import GrammarCompiler


@dataclass(frozen=True)
class ServingContext:
    """Everything a handler needs, built once at start-up."""

    engine: EngineClient
    models: ModelRegistry
    template: ChatTemplate
    tokenizer: Tokenizer  # the model's, safe to call from the event loop
    grammars: GrammarCompiler
    faults: FaultInjector | None = None  # --fault-injection: tests arm faults on the runner

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def max_num_seqs(self) -> int:
        return self.engine.config.max_num_seqs


class UsageMeter(Protocol):
    """Accounting for one request (tenancy implements it): serving reports admission and every
    engine output, so usage is counted from the same numbers the client is shown."""

    async def admit(
        self, request_id: str, prompt_tokens: int, max_new_tokens: int
    ) -> tuple[str, int]:
        """Admit (or raise 429/503) and return ``(service tier used, engine priority)``."""
        ...

    def observe(
        self, index: int, new_tokens: int, cached_tokens: int, failed: bool, code: str | None
    ) -> None:
        """One output of engine request ``index``; ``failed`` with the error's ``code``."""
        ...

    def headers(self) -> dict[str, str]:
        """Headers for the response (rate limits)."""
        ...

    def close(self, status: str) -> None:
        """The request ended with ``status``; later calls do nothing."""
        ...

    @property
    def first_output_timeout(self) -> float | None:
        """How long the request may wait for its first output (flex), if bounded."""
        ...

    def timed_out(self) -> None: ...


class RequestMeter:
    """A request's usage meter plus its share of the engine's queue bound: admission takes
    its sequences from the bound (503 past it) before tenancy admits it, and ``close`` gives
    them back, once, however the request ended. The route closes it on every path."""

    def __init__(
        self,
        usage: UsageMeter,
        engine: EngineClient,
        timer: RequestTimer | None = None,
        content: dict[str, Any] | None = None,
    ) -> None:
        self.usage = usage
        self.engine = engine
        self.timer = timer  # Prometheus' view of the request
        # With --log-content: the log line's fields, which get the generated text at close.
        self.content = content
        self._texts: dict[tuple[int, int], str] = {}
        self._seqs = 0

    async def admit(
        self, request_id: str, prompt_tokens: int, max_new_tokens: int, seqs: int
    ) -> tuple[str, int]:
        if not self.engine.reserve(seqs):
            raise Overloaded(
                "The server is overloaded: its queue is full. Please retry shortly.",
                headers={"retry-after": OVERLOAD_RETRY_AFTER},
            )
        self._seqs = seqs
        try:
            admitted = await self.usage.admit(request_id, prompt_tokens, max_new_tokens)
        except BaseException as e:
            self._release()
            if isinstance(e, RateLimited) and self.timer is not None:
                self.timer.refused()
            raise
        if self.timer is not None:
            self.timer.admit(prompt_tokens)
        return admitted

    def observe(self, index: int, out: RequestOutput) -> None:
        if self.timer is not None:
            self.timer.observe(index, out)
        if self.content is not None:
            for d in out.deltas:
                key = (index, d.index)
                self._texts[key] = self._texts.get(key, "") + d.text
        new = sum(len(d.token_ids) for d in out.deltas)
        self.usage.observe(index, new, out.num_cached_tokens, out.error is not None, out.error_code)

    @property
    def first_output_timeout(self) -> float | None:
        return self.usage.first_output_timeout

    def timed_out(self) -> None:
        self.usage.timed_out()

    def headers(self) -> dict[str, str]:
        return self.usage.headers()

    def close(self, status: str) -> None:
        self.usage.close(status)
        if self.timer is not None:
            self.timer.close()
        if self.content is not None:  # one text per choice, in order
            self.content["completion"] = [self._texts[k] for k in sorted(self._texts)]
        self._release()

    def _release(self) -> None:
        self.engine.release(self._seqs)
        self._seqs = 0


async def admit(
    meter: RequestMeter | None, meta: ResponseMeta, ereqs: list[EngineRequest]
) -> tuple[ResponseMeta, list[EngineRequest]]:
    """Admit fully built engine requests: the tier used goes into the response, its priority
    into the engine requests. Without a meter nothing changes."""
    if meter is None:
        return meta, ereqs
    tier, priority = await meter.admit(
        meta.id,
        prompt_tokens=sum(len(r.prompt_token_ids) for r in ereqs),
        max_new_tokens=sum(r.params.max_tokens * r.params.n for r in ereqs),
        seqs=sum(r.params.n for r in ereqs),
    )
    meta = dataclasses.replace(meta, service_tier=tier)
    return meta, [dataclasses.replace(r, priority=priority) for r in ereqs]


OVERLOAD_RETRY_AFTER = "1"


class EngineFailed(APIError):
    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def service_tier(req: GenerationFields) -> str:
    """The tier actually used: ``auto`` (or nothing) resolves to ``default``."""
    tier = req.service_tier or "auto"
    return "default" if tier == "auto" else tier


def sampling_params(
    req: GenerationFields,
    ctx: ServingContext,
    prompt_len: int,
    max_tokens: int | None,
    default_max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None,
    prompt_param: str,
) -> SamplingParams:
    """Turn validated request fields into engine parameters, enforcing model limits."""
    info = ctx.info
    n = req.n or 1
    if n > ctx.max_num_seqs:
        raise BadRequest(f"n must be at most {ctx.max_num_seqs} on this server", "n")
    if prompt_len >= info.n_ctx:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {info.n_ctx} tokens. However, your "
            f"prompt has {prompt_len} tokens. Please reduce the length of the prompt.",
            prompt_param,
        )
    room = info.n_ctx - prompt_len
    if max_tokens is None:
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
    elif max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {info.n_ctx} tokens. However, you "
            f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            "max_tokens",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_temperature(req.temperature),
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(req.top_k or 0, 0),
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=max(req.repetition_penalty or 1.0, MIN_REPETITION_PENALTY),
        logit_bias=_logit_bias(req.logit_bias, info.vocab_size),
        seed=req.seed,
        n=n,
        stop=req.stop_list,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


# The sampler divides logits by the temperature and by the repetition penalty: below these,
# float32 overflows to inf (then nan), and the outcome is the same as at these values anyway:
# a temperature this small is greedy (vLLM treats it so too), a penalty this small makes the
# seen tokens win outright.
MIN_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 1e-6


def _temperature(value: float | None) -> float:
    if value is None:
        return 1.0
    return 0.0 if value < MIN_TEMPERATURE else value


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        tok = int(key)
        if not 0 <= tok < vocab_size:
            raise BadRequest(
                f"logit_bias token id {tok} is outside the vocabulary (0..{vocab_size - 1})",
                "logit_bias",
            )
        out[tok] = value
    return out


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise BadRequest(
            f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param
        )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


@dataclass
class ChoiceState:
    """A choice's accumulated output, for non-streamed responses and usage."""

    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, delta: ChoiceDelta) -> None:
        """Fold in one engine step's output for this choice."""
        self.text.append(delta.text)
        self.num_tokens += len(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason


async def run_all(
    engine: EngineClient, requests: list[EngineRequest], meter: RequestMeter | None = None
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run several engine requests at once; yield ``(request index, output)`` as they come,
    each first shown to ``meter``.

    Leaving early (client gone) cancels them all, which aborts them in the engine.
    """
    timeout = meter.first_output_timeout if meter is not None else None
    if len(requests) == 1 and timeout is None:  # the common case, without a relay per output
        single = engine.generate(requests[0])
        try:
            async for out in single:
                if meter is not None:
                    meter.observe(0, out)
                _raise_if_failed(out)
                yield 0, out
        finally:
            await single.aclose()
        return
    outputs = _merged(engine, requests)
    if timeout is not None and meter is not None:
        outputs = _first_within(outputs, timeout, meter)
    try:
        async for i, out in outputs:
            if meter is not None:
                meter.observe(i, out)
            _raise_if_failed(out)
            yield i, out
    finally:
        await outputs.aclose()


async def _merged(
    engine: EngineClient, requests: list[EngineRequest]
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    if len(requests) == 1:
        async for out in engine.generate(requests[0]):
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, RequestOutput] | None] = asyncio.Queue()

    async def pump(i: int, req: EngineRequest) -> None:
        async for out in engine.generate(req):
            await queue.put((i, out))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    remaining = len(requests)
    try:
        while remaining:
            item = await queue.get()
            assert item is not None
            remaining -= item[1].finished
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _first_within(
    outputs: AsyncGenerator[tuple[int, RequestOutput], None], timeout: float, meter: RequestMeter
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Give up (aborting the engine requests) if nothing comes within ``timeout`` seconds."""
    try:
        first = await asyncio.wait_for(anext(outputs), timeout)
    except asyncio.TimeoutError:  # not yet the builtin TimeoutError on Python 3.10
        meter.timed_out()
        raise QueueTimeout(
            f"The request waited {timeout:g}s for capacity (service_tier 'flex'); retry later "
            "or use another tier.",
            headers={"retry-after": str(max(1, int(timeout)))},
        ) from None
    yield first
    try:
        async for item in outputs:
            yield item
    finally:
        await outputs.aclose()


def _raise_if_failed(out: RequestOutput) -> None:
    if out.error_code in (SHUTTING_DOWN, REPLICA_LOST):
        raise ServiceUnavailable(
            f"{out.error}: retry on another replica or later",
            code=out.error_code,
            headers={"retry-after": SHUTDOWN_RETRY_AFTER},
        )
    if out.error_code == ENGINE_OVERLOADED:
        raise Overloaded(
            f"The server is overloaded: {out.error}. Please retry shortly.",
            headers={"retry-after": OVERLOAD_RETRY_AFTER},
        )
    if out.error:
        raise EngineFailed(f"generation failed: {out.error}")
