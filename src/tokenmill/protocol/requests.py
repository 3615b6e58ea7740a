"""Request bodies of the public API, validated once at the edge.

Unknown fields are ignored (clients of other providers send vendor extras); known fields
that tokenmill cannot honour yet are rejected with a 400 naming them, never silently dropped.

Types are strict, as OpenAI's are: ``"stream": "yes"``, ``"n": 1.5``, ``"n": true`` or
``"max_tokens": "16"`` are 400s, not coerced. The one widening kept is a JSON integer for a
number field (``"temperature": 1``), which JSON cannot tell apart from ``1.0`` anyway.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenmill.runner.faults import FaultKind  # the runner owns which faults exist

ServiceTier = Literal["auto", "default", "over-limit", "flex", "no-limit"]
MAX_STOP = 4
MAX_LOGPROBS = 20


# Strict: no str -> bool/number, float -> int or bool -> int coercion (int -> float stays).
STRICT = ConfigDict(extra="ignore", strict=True)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool | None = False


class GenerationFields(BaseModel):
    """Fields shared by chat and legacy completions."""

    model_config = STRICT

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    service_tier: ServiceTier | None = None
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Structured output: validated and compiled by tokenmill.structured (400 naming the field).
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    response_format: Any = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_count(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return v

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class UnsupportedField(ValueError):
    """Raised inside validation; the edge turns it into a 400 naming ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # Tools are validated by tokenmill.structured, which names the exact field at fault.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs requires logprobs to be true")
        return self

    @property
    def max_output(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(GenerationFields):
    prompt: PromptInput
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_rules(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise UnsupportedField("prompt", "prompt must not be empty")
        if isinstance(self.prompt, list) and any(
            isinstance(p, list) and not p for p in self.prompt
        ):
            raise UnsupportedField("prompt", "token-id prompts must not be empty")
        if self.suffix:
            raise UnsupportedField("suffix", "suffix is not supported")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise UnsupportedField("best_of", "best_of other than n is not supported")
        return self


class FaultRequest(BaseModel):
    """``POST /internal/faults`` (only with ``--fault-injection``): what to break, how often."""

    model_config = ConfigDict(extra="forbid")
    kind: FaultKind
    count: int = Field(1, ge=1, le=1000)
    seconds: float = Field(0.0, ge=0.0, le=600.0)
    skip: int = Field(0, ge=0)
