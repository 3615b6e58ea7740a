"""Logprobs in the three wire shapes: chat, legacy completions and ``prompt_logprobs``."""

from __future__ import annotations

from typing import Any

from tokenmill.engine.messages import PromptLogprob
from tokenmill.runner.base import ModelInfo
from tokenmill.sampling.sampler import TokenLogprob


def chat_logprobs(lps: list[TokenLogprob], info: ModelInfo) -> dict[str, Any]:
    """``{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}``."""
    return {
        "content": [
            {
                **_token_entry(lp.token_id, lp.logprob, info),
                "top_logprobs": [_token_entry(t, v, info) for t, v in lp.top],
            }
            for lp in lps
        ],
        "refusal": None,
    }


def _token_entry(token_id: int, logprob: float, info: ModelInfo) -> dict[str, Any]:
    return {
        "token": info.token_text(token_id),
        "logprob": logprob,
        "bytes": list(info.token_bytes(token_id)),
    }


def legacy_logprobs(
    prompt: list[PromptLogprob | None] | None,
    prompt_ids: list[int],
    lps: list[TokenLogprob],
    info: ModelInfo,
    text_offset_start: int,
) -> dict[str, Any]:
    """``{tokens, token_logprobs, top_logprobs, text_offset}``; with echo, prompt tokens first.

    ``prompt`` holds the echoed prompt's logprobs (its first entry is null: nothing precedes
    the first token) or is None without echo.
    """
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = text_offset_start
    if prompt is not None:
        for tok, prompt_lp in zip(prompt_ids, prompt, strict=False):
            text = info.token_text(tok)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if prompt_lp is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
            else:
                token_logprobs.append(prompt_lp.logprob)
                top_logprobs.append(
                    _top_dict(prompt_lp.token_id, prompt_lp.logprob, prompt_lp.top, info)
                )
    for lp in lps:
        # What the token added to the completion's text: generated control tokens add
        # nothing, so ``tokens`` joins to the text and ``text_offset`` stays true.
        text = info.token_pieces[lp.token_id].decode("utf-8", errors="replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_logprobs.append(lp.logprob)
        top_logprobs.append(_top_dict(lp.token_id, lp.logprob, lp.top, info))
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


def _top_dict(
    token_id: int, logprob: float, top: tuple[tuple[int, float], ...], info: ModelInfo
) -> dict[str, float]:
    """The k most likely tokens, plus the chosen one (so up to k + 1 entries)."""
    out = {info.token_text(t): v for t, v in top}
    out.setdefault(info.token_text(token_id), logprob)
    return out


def prompt_logprobs_json(
    entries: list[PromptLogprob | None] | None, info: ModelInfo
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's shape: per prompt position ``{token_id: {logprob, rank, decoded_token}}``."""
    if entries is None:
        return None
    out: list[dict[str, dict[str, Any]] | None] = []
    for e in entries:
        if e is None:
            out.append(None)
            continue
        d = {str(e.token_id): _prompt_entry(e.logprob, e.rank, e.token_id, info)}
        for rank, (tok, lp) in enumerate(e.top, start=1):
            d.setdefault(str(tok), _prompt_entry(lp, rank, tok, info))
        out.append(d)
    return out


def _prompt_entry(logprob: float, rank: int, token_id: int, info: ModelInfo) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": info.token_text(token_id)}
