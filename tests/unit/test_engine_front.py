"""The asyncio front of the engine: outputs cross from the engine thread in batches, and a
consumer slower than the engine gets the outputs that piled up as one."""

from __future__ import annotations

import asyncio

from tokenmill.config import EngineConfig
from tokenmill.engine.front import AsyncEngine
from tokenmill.engine.messages import ChoiceDelta, EngineRequest, RequestOutput
from tokenmill.runner.fake import FakeRunner
from tokenmill.sampling.params import SamplingParams
from tokenmill.sampling.sampler import TokenLogprob


def _lp(t: int) -> TokenLogprob:
    return TokenLogprob(t, -0.5, ())


def test_merge_appends_each_choice_in_order_and_keeps_the_end() -> None:
    first = RequestOutput(
        "r",
        [ChoiceDelta(0, "a", [1], [_lp(1)]), ChoiceDelta(1, "x", [5])],
        10,
        num_cached_tokens=4,
        prompt_logprobs=[None],
    )
    later = RequestOutput(
        "r",
        [ChoiceDelta(0, "b", [2], [_lp(2)], finish_reason="stop", stop_reason="!")],
        10,
        finished=True,
        num_cached_tokens=4,
    )
    first.merge(later)
    a, x = first.deltas
    assert (a.text, a.token_ids, [lp.token_id for lp in a.logprobs]) == ("ab", [1, 2], [1, 2])
    assert (a.finish_reason, a.stop_reason) == ("stop", "!")
    assert (x.text, x.finish_reason) == ("x", None)
    assert first.finished and first.prompt_logprobs == [None] and first.num_cached_tokens == 4


def test_merge_carries_an_error() -> None:
    out = RequestOutput("r", [ChoiceDelta(0, "a", [1])], 3)
    out.merge(RequestOutput("r", [], 3, True, error="boom", error_code="x"))
    assert out.finished and (out.error, out.error_code) == ("boom", "x")
    assert out.deltas[0].text == "a"


async def _read(engine: AsyncEngine, rid: str, lag: float) -> list[RequestOutput]:
    params = SamplingParams(max_tokens=40, temperature=0.0)
    outs = []
    async for out in engine.generate(EngineRequest(rid, [2, 3, 4, 5], params)):
        outs.append(out)
        await asyncio.sleep(lag)
    return outs


def test_a_lagging_reader_gets_fewer_larger_outputs_with_the_same_text() -> None:
    engine = AsyncEngine(FakeRunner(), EngineConfig(max_num_seqs=2, max_batch_tokens=64))
    engine.start()
    try:
        prompt_outs = asyncio.run(_read(engine, "fast", 0.0))
        lagged = asyncio.run(_read(engine, "slow", 0.02))
    finally:
        engine.stop()

    def text(outs: list[RequestOutput]) -> tuple[str, list[int], str | None]:
        deltas = [d for o in outs for d in o.deltas]
        tokens = [t for d in deltas for t in d.token_ids]
        return "".join(d.text for d in deltas), tokens, deltas[-1].finish_reason

    assert text(lagged) == text(prompt_outs)
    assert len(text(lagged)[1]) == 40 and text(lagged)[2] == "length"
    assert len(lagged) < 40 / 2  # piled-up outputs came as one
    assert lagged[-1].finished and not any(o.finished for o in lagged[:-1])
