"""``tokenmill serve --flash-attn off`` reaches llama.cpp: the same greedy request gets logprobs
rounded by another attention kernel than on the default server (where llama.cpp's ``auto``
takes flash attention on this CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server

BODY = {
    "model": MODEL,
    "prompt": "The quick brown fox jumps over the lazy dog. " * 4 + "Once upon a time",
    "max_tokens": 8,
    "temperature": 0,
    "logprobs": 1,
}


@pytest.fixture(scope="module")
def no_flash_server() -> Iterator[Server]:
    s = start_server("--api-key", API_KEY, "--max-num-seqs", "2", "--flash-attn", "off")
    yield s
    stop_server(s)


def logprobs(server: Server) -> list[float]:
    r = httpx.post(
        f"{server.base_url}/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    r.raise_for_status()
    return list(r.json()["choices"][0]["logprobs"]["token_logprobs"])


def test_flash_attention_changes_the_kernels(server: Server, no_flash_server: Server) -> None:
    flash = logprobs(server)
    plain = logprobs(no_flash_server)
    assert flash != plain  # another kernel's rounding...
    assert max(abs(a - b) for a, b in zip(plain, flash, strict=True)) < 0.5  # ...same model
