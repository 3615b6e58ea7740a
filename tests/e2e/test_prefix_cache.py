"""The prefix cache on the real model: reuse is reported and, with ``--deterministic``,
changes no output (the default kernels round a reused prefix's last token differently from a
prompt computed whole: within tests/e2e/test_kernels.py's tolerance)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL, Server, start_server, stop_server
from tokenmill.bench.soak.probe import metric_sum

SYSTEM = (
    "You are the help desk of a small library. Opening hours are nine to five on weekdays "
    "and ten to two on Saturdays. Members may borrow six books for three weeks, renew twice "
    "online, and reserve new titles. Late fees are ten cents a day. The reading room has "
    "quiet study desks, printers and free wifi. Answer briefly and politely."
)
QUESTIONS = [f"Question {i}: can I {q}?" for i, q in enumerate(
    ["renew a book twice", "print in color", "come on Sunday", "borrow ten books",
     "reserve a new title", "study in the reading room", "pay a late fee online", "use wifi"]
)]  # fmt: skip


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def cold() -> Iterator[Server]:
    s = start_server("--no-prefix-cache", "--deterministic")
    yield s
    stop_server(s)


async def _answers(base_url: str, concurrent: bool) -> list[tuple[str, int]]:
    c = openai.AsyncOpenAI(base_url=base_url, api_key="tm-test-key", max_retries=0)

    async def one(q: str) -> tuple[str, int]:
        r = await c.chat.completions.create(
            model=MODEL,
            messages=ask(q),
            max_tokens=24,
            temperature=0,  # type: ignore[arg-type]
        )
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        return r.choices[0].message.content or "", r.usage.prompt_tokens_details.cached_tokens or 0

    if concurrent:
        return list(await asyncio.gather(*(one(q) for q in QUESTIONS)))
    return [await one(q) for q in QUESTIONS]


def test_cached_prefix_gives_identical_answers_and_reports_reuse(
    deterministic_server: Server, cold: Server
) -> None:
    server = deterministic_server
    reference = asyncio.run(_answers(cold.base_url, concurrent=False))
    assert all(cached == 0 for _, cached in reference)  # the cache really is off there
    # Batching alone: ~100-token prompts of unequal lengths prefilled in one step.
    cold_concurrent = asyncio.run(_answers(cold.base_url, concurrent=True))
    assert [t for t, _ in cold_concurrent] == [t for t, _ in reference]
    sequential = asyncio.run(_answers(server.base_url, concurrent=False))
    concurrent = asyncio.run(_answers(server.base_url, concurrent=True))
    texts = [t for t, _ in reference]
    assert [t for t, _ in sequential] == texts
    assert [t for t, _ in concurrent] == texts
    # The system prompt (and the template around it) is reused, sequentially from a finished
    # request's slot and concurrently by copying from the first request computing it.
    assert all(cached >= 60 for _, cached in sequential[1:])
    assert sum(cached >= 60 for _, cached in concurrent) >= len(QUESTIONS) - 1


def test_completion_prompt_reuse_and_exact_repeat(client: openai.OpenAI) -> None:
    prompt = "The three laws of thermodynamics, explained simply: " * 6
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert again.choices[0].text == first.choices[0].text
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    # Everything but the last prompt token (whose logits start the completion) is reused.
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


@pytest.fixture(scope="module")
def one_slot() -> Iterator[Server]:
    """One slot: every other conversation's turn overwrites it, so a conversation's history
    survives only in the host-memory tier."""
    s = start_server("--max-num-seqs", "1", "--deterministic")
    yield s
    stop_server(s)


def _turns(base_url: str) -> list[tuple[str, int]]:
    """Two conversations, interleaved, two turns each; each turn resends the history."""
    c = openai.OpenAI(base_url=base_url, api_key="tm-test-key", max_retries=0)
    other = [
        {"role": "system", "content": "You are a terse assistant for a bicycle repair shop. " * 4},
        {"role": "user", "content": "How often should I oil my chain?"},
    ]
    histories = [ask(QUESTIONS[0]), other]  # they share only the template's first tokens
    results = []
    for turn in range(2):
        for h in histories:
            r = c.chat.completions.create(model=MODEL, messages=h, max_tokens=16, temperature=0)  # type: ignore[arg-type]
            assert r.usage is not None and r.usage.prompt_tokens_details is not None
            text = r.choices[0].message.content or ""
            results.append((text, r.usage.prompt_tokens_details.cached_tokens or 0))
            h.append({"role": "assistant", "content": text})
            h.append({"role": "user", "content": f"And {turn}?"})
    return results


def test_a_conversation_evicted_from_its_slot_is_restored_from_host_memory(
    one_slot: Server, cold: Server
) -> None:
    reference = _turns(cold.base_url)
    got = _turns(one_slot.base_url)
    assert [t for t, _ in got] == [t for t, _ in reference]  # bit-exact after a restore
    # The second turns (indices 2, 3) reuse their whole first turn (a prompt of 60+ tokens
    # and the answer), which the other conversation had overwritten in the only slot.
    assert all(cached >= 60 for _, cached in got[2:])
    metrics = httpx.get(f"{one_slot.root}/metrics", timeout=10).text
    restores = metric_sum(metrics, "tokenmill_host_cache_restores_total")
    assert restores is not None and restores >= 2
