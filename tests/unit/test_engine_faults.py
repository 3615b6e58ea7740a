"""Nothing a request does stops the engine loop: faults in one request's own work fail that
request alone, a failing batch fails only its requests, and the next batch runs."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.unit.test_engine import PROMPTS, Harness, alone
from tokenmill.config import EngineConfig
from tokenmill.engine.core import EngineCore
from tokenmill.engine.front import AsyncEngine
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.runner.fake import FakeRunner
from tokenmill.runner.faults import FaultInjector
from tokenmill.sampling.params import SamplingParams
from tokenmill.sampling.sampler import generator_seed
from tokenmill.structured.matcher import Matcher


class FaultyHarness(Harness):
    def __init__(self, max_num_seqs: int = 8, budget: int = 64) -> None:
        super().__init__(max_num_seqs=max_num_seqs, budget=budget)
        self.faults = FaultInjector(self.runner)
        self.engine = EngineCore(self.faults, self.config)

    def error(self, rid: str) -> str | None:
        last = self.outputs[rid][-1]
        assert last.finished
        return last.error


def params(**kw: Any) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 20, "temperature": 0.0, **kw})


# -- seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1, 2**64 - 1, 0])
def test_every_64_bit_seed_is_accepted_and_reproducible(seed: int) -> None:
    first = alone(PROMPTS[2], temperature=1.0, seed=seed)
    assert first[0]
    assert alone(PROMPTS[2], temperature=1.0, seed=seed) == first


def test_signed_seeds_map_to_their_unsigned_bits() -> None:
    assert generator_seed(-1) == 2**64 - 1
    assert generator_seed(-(2**63)) == 2**63
    assert generator_seed(5) == 5
    assert alone(PROMPTS[1], temperature=1.0, seed=-1) == alone(
        PROMPTS[1], temperature=1.0, seed=2**64 - 1
    )


# -- one request's own work failing ------------------------------------------------------------


class _NoMatcher:
    """A grammar whose set-up raises, as a bug in matcher creation would."""

    grammar = "broken"

    def matcher(self) -> Matcher:
        raise RuntimeError("matcher set-up failed")


class _ExplodingMatcher(Matcher):
    """Follows no grammar (every token allowed) until its ``after``-th mask, which raises."""

    __slots__ = ("after", "calls")

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0

    def fill_mask(self, bitmask: Any, row: int) -> None:
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("mask computation failed")
        bitmask[row] = -1  # every bit set: everything allowed

    def accept(self, token_id: int) -> bool:
        return True

    def is_finished(self) -> bool:
        return False

    @property
    def error(self) -> str | None:
        return None


class _ExplodingGrammar:
    grammar = "exploding"

    def __init__(self, after: int) -> None:
        self.after = after

    def matcher(self) -> Matcher:
        return _ExplodingMatcher(self.after)


def test_a_request_whose_set_up_fails_fails_alone() -> None:
    h = FaultyHarness()
    h.submit("ok1", PROMPTS[0])
    h.add(EngineRequest("bad", PROMPTS[1], params(), grammar=_NoMatcher()))  # type: ignore[arg-type]
    h.submit("ok2", PROMPTS[2])
    h.run()
    assert h.error("bad") is not None and "admitting" in h.error("bad")  # type: ignore[operator]
    assert h.texts("ok1") == alone(PROMPTS[0])
    assert h.texts("ok2") == alone(PROMPTS[2])
    assert h.engine.request_failures == 1


def test_a_request_whose_sampling_fails_mid_stream_fails_alone() -> None:
    h = FaultyHarness()
    for i in range(3):
        h.submit(f"ok{i}", PROMPTS[i])
    bad = EngineRequest("bad", PROMPTS[3], params(), grammar=_ExplodingGrammar(after=4))  # type: ignore[arg-type]
    h.add(bad)
    h.run()
    outs = h.outputs["bad"]
    assert sum(len(d.token_ids) for o in outs for d in o.deltas) == 3  # three good steps
    assert h.error("bad") is not None and "sampling" in h.error("bad")  # type: ignore[operator]
    for i in range(3):  # shared every batch with the culprit, and untouched by it
        assert h.texts(f"ok{i}") == alone(PROMPTS[i])
        assert h.outputs[f"ok{i}"][-1].error is None
    # The loop is fine: a new request after the failure runs as usual.
    h.submit("after", PROMPTS[4])
    h.run()
    assert h.texts("after") == alone(PROMPTS[4])


def test_a_failing_detokenizer_fails_only_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenmill.engine import detok

    h = FaultyHarness()
    real_push = detok.Detokenizer.push

    def push(self: detok.Detokenizer, token_id: int) -> tuple[str, str | None]:
        if self._stops == ("boom",):
            raise UnicodeError("detokenizer failed")
        return real_push(self, token_id)

    monkeypatch.setattr(detok.Detokenizer, "push", push)
    h.submit("ok", PROMPTS[0])
    h.submit("bad", PROMPTS[1], stop=("boom",))
    h.run()
    assert h.error("bad") is not None
    assert h.texts("ok") == alone(PROMPTS[0])


# -- a failing batch ----------------------------------------------------------------------------


def test_a_decode_error_fails_only_the_requests_in_that_batch() -> None:
    # One slot: "a" runs alone while "b" waits, so only "a" is in the failing batch.
    h = FaultyHarness(max_num_seqs=1)
    h.submit("a", PROMPTS[0])
    h.submit("b", PROMPTS[1])
    h.step()  # a's prompt
    h.faults.arm("decode_error")
    h.run()
    assert h.faults.fired["decode_error"] == 1
    assert h.error("a") == "the model failed to run this batch"
    assert h.error("b") is None
    assert h.texts("b") == alone(PROMPTS[1])
    h.submit("c", PROMPTS[2])  # and the engine goes on
    h.run()
    assert h.texts("c") == alone(PROMPTS[2])


def test_kv_full_mid_decode_recomputes_with_identical_output() -> None:
    h = FaultyHarness()
    for i in range(3):
        h.submit(f"r{i}", PROMPTS[i])
    h.faults.arm("kv_full", count=2, skip=3)
    h.run()
    assert h.faults.fired["kv_full"] == 2
    assert h.engine.scheduler.num_preemptions > 0
    for i in range(3):
        assert h.error(f"r{i}") is None
        assert h.texts(f"r{i}") == alone(PROMPTS[i])


# -- the thread itself --------------------------------------------------------------------------


def _collect(engine: AsyncEngine, rid: str, prompt: list[int]) -> list[RequestOutput]:
    got: list[RequestOutput] = []
    done = threading.Event()

    def sink(out: RequestOutput) -> None:
        got.append(out)
        if out.finished:
            done.set()

    engine.loop.submit(EngineRequest(rid, prompt, params()), sink)
    assert done.wait(10)
    return got


def test_a_stalled_step_shows_in_health_until_it_ends() -> None:
    runner = FaultInjector(FakeRunner())
    engine = AsyncEngine(runner, EngineConfig(max_num_seqs=2, max_batch_tokens=64))
    engine.start()
    try:
        assert engine.health(stall_timeout=0.2) is None
        runner.arm("stall", seconds=1.0)
        result: list[list[RequestOutput]] = []
        t = threading.Thread(target=lambda: result.append(_collect(engine, "s", PROMPTS[0])))
        t.start()
        time.sleep(0.5)
        problem = engine.health(stall_timeout=0.2)
        assert problem is not None and "running for" in problem
        t.join(10)
        assert result and result[0][-1].error is None  # the stalled request completes
        assert engine.health(stall_timeout=0.2) is None
    finally:
        engine.stop()


def test_a_dead_engine_thread_is_reported_and_fails_what_it_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = AsyncEngine(FakeRunner(), EngineConfig(max_num_seqs=2, max_batch_tokens=64))
    died: list[BaseException] = []
    engine.loop.on_death = died.append
    got: list[RequestOutput] = []
    engine.loop.submit(EngineRequest("x", PROMPTS[0], params(max_tokens=400)), got.append)
    real_drain = engine.loop._drain_inbox
    calls = 0

    def drain(block: bool) -> bool:  # the inbox runs outside every per-request guard
        nonlocal calls
        calls += 1
        if calls > 2:
            raise SystemError("the loop itself broke")
        return real_drain(block)

    monkeypatch.setattr(engine.loop, "_drain_inbox", drain)
    engine.start()
    deadline = time.monotonic() + 5
    while not died and time.monotonic() < deadline:  # told last, once the clients were
        time.sleep(0.01)
    assert not engine.loop.alive
    assert died and isinstance(died[0], SystemError)
    assert got[-1].finished and got[-1].error == "the engine stopped"  # not left hanging
    problem = engine.health(stall_timeout=60)
    assert problem is not None and "not running" in problem
