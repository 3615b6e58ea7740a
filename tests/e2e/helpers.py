"""What several e2e modules share: request pieces for the embedded model, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.chat import user as user  # re-exported: the e2e modules import it from here

T = TypeVar("T")

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# SmolLM2's control tokens: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>. With all three
# banned, a request runs to its max_tokens.
NO_EOS = {"0": -100, "1": -100, "2": -100}
HOT: dict[str, Any] = {"temperature": 1.0}  # sampled, for tests over many seeds


async def streamed_and_not(run: Callable[..., Awaitable[list[T]]], seed: int, **kw: Any) -> list[T]:
    """``run(stream, seed=..., **kw)`` both ways at once, with different seeds (twice the
    variety): the non-streamed results, then the streamed ones."""
    plain, streamed = await asyncio.gather(
        run(False, seed=seed, **kw), run(True, seed=seed + 1000, **kw)
    )
    return plain + streamed
