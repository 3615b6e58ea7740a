"""Concurrent requests batch without changing answers; abandoned requests free their slots."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    API_KEY,
    MODEL,
    Server,
    engine_goes_idle,
    engine_steps,
    start_server,
    stop_server,
)
from tests.e2e.helpers import NO_EOS

PROMPTS = [
    "Name three fruits.",
    "What is the capital of Italy?",
    "Describe the sea in one sentence.",
    "Write a haiku about autumn leaves.",
    "Explain what a computer is to a child.",
    "List the days of the week.",
    "Why is the sky blue?",
    "Give me a tip for learning to cook, in detail, with an example recipe.",
]
MAX_TOKENS = 32
LONG_STORY = "Tell me a very long story about a dragon who learns to fly."
# <|endoftext|> and <|im_end|>: banned so a long generation cannot end early by itself.


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


async def stream_chat(aclient: openai.AsyncOpenAI, prompt: str) -> tuple[str, str | None]:
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=messages(prompt),  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    parts: list[str] = []
    finish: str | None = None
    async for chunk in stream:
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(parts), finish


async def test_concurrent_streams_match_solo_runs(
    aclient: openai.AsyncOpenAI, server: Server
) -> None:
    steps = engine_steps(server.root)
    solo = [await stream_chat(aclient, p) for p in PROMPTS]
    solo_steps, steps = engine_steps(server.root) - steps, engine_steps(server.root)
    assert all(text for text, _ in solo)
    assert len({text for text, _ in solo}) == len(PROMPTS)  # really different requests
    together = await asyncio.wait_for(
        asyncio.gather(*(stream_chat(aclient, p) for p in PROMPTS)), timeout=180
    )
    # They really shared batches: far fewer steps than one after the other.
    assert engine_steps(server.root) - steps < 0.6 * solo_steps
    for prompt, alone, batched in zip(PROMPTS, solo, together, strict=True):
        assert batched == alone, prompt


async def test_concurrent_non_streamed_match_solo(aclient: openai.AsyncOpenAI) -> None:
    async def once(prompt: str) -> str:
        r = await aclient.completions.create(
            model=MODEL, prompt=prompt, max_tokens=16, temperature=0
        )
        return r.choices[0].text

    prompts = PROMPTS[:4]
    solo = [await once(p) for p in prompts]
    together = await asyncio.wait_for(asyncio.gather(*(once(p) for p in prompts)), timeout=120)
    assert together == solo


def test_n4_greedy_choices_identical(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": messages(PROMPTS[2]),
        "max_tokens": 24,
        "temperature": 0,
    }
    one = client.chat.completions.create(**kw)
    four = client.chat.completions.create(n=4, **kw)
    assert [c.index for c in four.choices] == [0, 1, 2, 3]
    expected = one.choices[0].message.content
    assert expected
    assert [c.message.content for c in four.choices] == [expected] * 4
    assert four.usage is not None and one.usage is not None
    assert four.usage.prompt_tokens == one.usage.prompt_tokens
    assert four.usage.completion_tokens == 4 * one.usage.completion_tokens


def test_n4_greedy_completions_identical(client: openai.OpenAI) -> None:
    one = client.completions.create(model=MODEL, prompt=PROMPTS[6], max_tokens=20, temperature=0)
    four = client.completions.create(
        model=MODEL, prompt=PROMPTS[6], max_tokens=20, temperature=0, n=4
    )
    assert [c.text for c in four.choices] == [one.choices[0].text] * 4


# -- abandoned requests ---------------------------------------------------------------------


def open_and_abandon_stream(
    root: str, max_tokens: int, chunks: int = 3, path: str = "/v1/chat/completions", **extra: Any
) -> int:
    """Start a long streamed generation, read a few content chunks, then hang up. Returns how
    many content chunks were seen (so the caller knows the sequences were really running)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "stream": True,
    }
    if path.endswith("/chat/completions"):
        body["messages"] = messages(LONG_STORY)
    else:
        body["prompt"] = LONG_STORY
    body.update(extra)
    seen = 0
    with (
        httpx.Client(
            base_url=root, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        ) as c,
        c.stream("POST", path, json=body) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for ch in chunk["choices"]:
                if ch.get("delta", {}).get("content") or ch.get("text"):
                    seen += 1
            if seen >= chunks:
                break
    # Leaving both context managers closes the response and the connection mid-stream.
    return seen


async def short_requests(root: str, count: int, timeout: float) -> list[str]:
    """``count`` concurrent small chat requests that must all finish within ``timeout``."""
    async with openai.AsyncOpenAI(
        base_url=f"{root}/v1", api_key=API_KEY, max_retries=0, timeout=timeout
    ) as ac:

        async def one(i: int) -> str:
            r = await ac.chat.completions.create(
                model=MODEL,
                messages=messages(PROMPTS[i % len(PROMPTS)]),  # type: ignore[arg-type]
                max_tokens=8,
                temperature=0,
            )
            assert r.choices[0].finish_reason in ("stop", "length")
            return r.choices[0].message.content or ""

        return await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(count))), timeout=timeout
        )


async def test_disconnect_frees_slot_on_main_server(server: Server) -> None:
    seen = await asyncio.to_thread(open_and_abandon_stream, server.root, 2000)
    assert seen == 3
    # Eight free slots would serve the follow-ups anyway: what shows the abort is the engine
    # going idle long before 2,000 tokens could have been generated.
    await engine_goes_idle(server.root, within=5)
    texts = await short_requests(server.root, 8, timeout=90)
    assert len(texts) == 8 and all(texts)


@pytest.fixture(scope="module")
def two_slot_server() -> Iterator[Server]:
    # A large context so that two LONG-token generations fit without preemption.
    s = start_server("--api-key", API_KEY, "--max-num-seqs", "2", "--ctx-size", "24576")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--max-num-seqs", "1", "--ctx-size", "16384")
    yield s
    stop_server(s)


# The abandoned generations are long enough (end-of-text banned) that, even on an idle
# machine (~100-150 tokens/s for this model), they would hold their slots well past the
# timeout below if they were not aborted when the client went away.
LONG = 12000
FREED_WITHIN = 60.0


async def test_disconnected_streams_free_their_sequences(two_slot_server: Server) -> None:
    root = two_slot_server.root
    # Sanity: the server answers while idle.
    assert await short_requests(root, 1, timeout=FREED_WITHIN)
    # Fill both slots with long streams, then hang up on both.
    seen = await asyncio.gather(
        asyncio.to_thread(open_and_abandon_stream, root, LONG),
        asyncio.to_thread(open_and_abandon_stream, root, LONG),
    )
    assert seen == [3, 3]
    texts = await short_requests(root, 3, timeout=FREED_WITHIN)  # bounded by the timeout
    assert len(texts) == 3 and all(texts)


async def test_stream_disconnect_twice_in_a_row(two_slot_server: Server) -> None:
    # Slots freed by a hang-up can be used and freed again.
    for _ in range(2):
        seen = await asyncio.to_thread(open_and_abandon_stream, two_slot_server.root, LONG, 2)
        assert seen == 2
    seen = await asyncio.gather(
        asyncio.to_thread(open_and_abandon_stream, two_slot_server.root, LONG, 2),
        asyncio.to_thread(open_and_abandon_stream, two_slot_server.root, LONG, 2),
    )
    assert seen == [2, 2]
    assert await short_requests(two_slot_server.root, 2, timeout=FREED_WITHIN)


async def test_disconnected_multi_sequence_streams_free_all(two_slot_server: Server) -> None:
    root = two_slot_server.root
    # Two prompts in one legacy completion: two sequences, both abandoned together.
    prompts = [LONG_STORY, "Write a very long poem about the sea."]
    seen = await asyncio.to_thread(
        open_and_abandon_stream, root, LONG, 4, "/v1/completions", prompt=prompts
    )
    assert seen == 4
    assert len(await short_requests(root, 2, timeout=FREED_WITHIN)) == 2
    # One chat request with n=2: two sequences behind a single engine request.
    seen = await asyncio.to_thread(open_and_abandon_stream, root, LONG, 4, n=2)
    assert seen == 4
    assert len(await short_requests(root, 2, timeout=FREED_WITHIN)) == 2


async def test_client_timeout_frees_sequence(one_slot_server: Server) -> None:
    root = one_slot_server.root
    body = {
        "model": MODEL,
        "messages": messages(LONG_STORY),
        "max_tokens": LONG,
        "temperature": 0,
        "logit_bias": NO_EOS,
    }

    def abandon(path: str, payload: dict[str, object]) -> None:
        """Send a long request and give up on it after half a second."""
        with (
            httpx.Client(
                base_url=root, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.5
            ) as c,
            pytest.raises(httpx.TimeoutException),
        ):
            c.post(path, json=payload)

    await asyncio.to_thread(abandon, "/v1/chat/completions", body)
    texts = await short_requests(root, 1, timeout=FREED_WITHIN)  # bounded by the timeout
    assert texts and texts[0]
    # And once more with a legacy completion.
    comp = {"model": MODEL, "prompt": LONG_STORY, "max_tokens": LONG, "logit_bias": NO_EOS}

    await asyncio.to_thread(abandon, "/v1/completions", comp)
    texts = await short_requests(root, 1, timeout=FREED_WITHIN)
    assert texts and texts[0]
