"""The engine loop on the fake runner: batching, forks, preemption and aborts keep outputs exact."""

from __future__ import annotations

import dataclasses
import re

from tokenmill.config import EngineConfig
from tokenmill.core.scheduler import MIN_COPY_GAIN
from tokenmill.engine.core import EngineCore
from tokenmill.engine.messages import EngineRequest, RequestOutput
from tokenmill.runner.base import KVCacheFull
from tokenmill.runner.fake import EOS, FakeRunner
from tokenmill.sampling.params import SamplingParams
from tokenmill.structured import CompiledGrammar, GrammarCompiler, grammar_for, make_tokenizer


class Harness:
    def __init__(
        self,
        n_ctx: int = 512,
        max_num_seqs: int = 8,
        budget: int = 64,
        spec_tokens: int = 0,
        spec_max_seqs: int = 1,
        prefix_cache: bool = True,
        host_cache_mib: int = EngineConfig.host_cache_mib,
        **kw: int,
    ) -> None:
        self.runner = FakeRunner(n_ctx=n_ctx, **kw)
        self.config = EngineConfig(
            max_num_seqs=max_num_seqs,
            max_batch_tokens=budget,
            prefix_cache=prefix_cache,
            host_cache_mib=host_cache_mib,
            spec_tokens=spec_tokens,
            spec_max_seqs=spec_max_seqs,
        )
        self.engine = EngineCore(self.runner, self.config)
        self.outputs: dict[str, list[RequestOutput]] = {}

    def submit(self, rid: str, prompt: list[int], **params: object) -> None:
        p = SamplingParams(**{"max_tokens": 20, "temperature": 0.0, **params})  # type: ignore[arg-type]
        self.add(EngineRequest(rid, prompt, p))

    def add(self, req: EngineRequest) -> None:
        self.outputs[req.request_id] = []
        self._route(self.engine.add_request(req))

    def step(self) -> None:
        self._route(self.engine.step())

    def abort(self, rid: str) -> None:
        self._route(self.engine.abort_request(rid))

    def _route(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self.outputs[out.request_id].append(out)

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.engine.has_work:
                return
            self.step()
        raise AssertionError("engine did not finish")

    def texts(self, rid: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for o in self.outputs[rid]:
            for d in o.deltas:
                out[d.index] = out.get(d.index, "") + d.text
        return out

    def finish(self, rid: str) -> dict[int, str | None]:
        return {
            d.index: d.finish_reason for o in self.outputs[rid] for d in o.deltas if d.finish_reason
        }


PROMPTS = [[2 + (i * 5 + j) % 60 for j in range(3 + i * 7)] for i in range(6)]


def alone(prompt: list[int], **params: object) -> dict[int, str]:
    h = Harness()
    h.submit("x", prompt, **params)
    h.run()
    return h.texts("x")


def test_batched_outputs_equal_outputs_alone() -> None:
    h = Harness()
    for i, p in enumerate(PROMPTS):
        h.submit(f"r{i}", p)
    h.run()
    assert max(h.runner.batch_sizes) > 1  # they really shared batches
    for i, p in enumerate(PROMPTS):
        assert h.texts(f"r{i}") == alone(p)
        assert h.outputs[f"r{i}"][-1].finished


def test_preemption_and_recompute_give_identical_output() -> None:
    h = Harness(kv_cells=60, budget=16)
    for i, p in enumerate(PROMPTS[:4]):
        h.submit(f"r{i}", p, max_tokens=12)
    h.run()
    assert h.engine.scheduler.num_preemptions > 0
    for i, p in enumerate(PROMPTS[:4]):
        assert h.texts(f"r{i}") == alone(p, max_tokens=12)


def test_n_choices_fork_the_prompt_once() -> None:
    h = Harness()
    h.submit("r", PROMPTS[3], n=3)
    h.run()
    texts = h.texts("r")
    assert set(texts) == {0, 1, 2}
    assert texts[0] == texts[1] == texts[2] == alone(PROMPTS[3])[0]
    # Each choice feeds back all but its last sampled token (19 of 20).
    prompt_tokens_fed = sum(h.runner.batch_sizes) - 3 * 19
    assert prompt_tokens_fed == len(PROMPTS[3])  # computed once, not three times


def test_abort_frees_kv_and_others_continue() -> None:
    h = Harness()
    h.submit("a", PROMPTS[1], max_tokens=200)
    h.submit("b", PROMPTS[2], max_tokens=200)
    for _ in range(3):
        h.step()
    h.abort("a")
    h.run()
    assert h.outputs["a"][-1].finished
    assert h.finish("a") == {0: "abort"}
    assert h.finish("b") == {0: "length"}
    sched = h.engine.scheduler
    assert sched.used_cells == 0 and len(sched.free_slots) == 8
    # What stays in the KV is exactly what the scheduler believes it caches.
    for slot, tokens in sched.slot_tokens.items():
        assert h.runner.kv.get(slot, []) == tokens


def test_stop_eos_and_length() -> None:
    h = Harness(eos_after=8)
    h.submit("eos", [2, 3, 4], max_tokens=50)
    h.submit("len", [2, 3, 4, 5, 6, 7, 8, 9, 10], max_tokens=50)
    h.run()
    assert h.finish("eos") == {0: "stop"}
    assert h.outputs["eos"][-1].deltas[-1].token_ids[-1] == EOS
    reference = alone([5, 6, 7], max_tokens=10)[0]
    h2 = Harness()
    h2.submit("s", [5, 6, 7], max_tokens=10, stop=(reference[3:5],))
    h2.run()
    assert h2.texts("s")[0] == reference[:3]
    last = h2.outputs["s"][-1].deltas[-1]
    assert (last.finish_reason, last.stop_reason) == ("stop", reference[3:5])


def test_seeded_sampling_is_reproducible_under_batching() -> None:
    ref = alone(PROMPTS[0], temperature=1.0, seed=7)
    h = Harness()
    h.submit("seeded", PROMPTS[0], temperature=1.0, seed=7)
    for i, p in enumerate(PROMPTS[1:]):
        h.submit(f"o{i}", p, temperature=1.0)
    h.run()
    assert h.texts("seeded") == ref


def test_prompt_logprobs_cover_the_prompt_in_chunks() -> None:
    h = Harness(budget=8)
    prompt = PROMPTS[4]  # 31 tokens, so prefill takes several chunks
    h.submit("p", prompt, prompt_logprobs=2, max_tokens=2)
    h.run()
    plp = h.outputs["p"][0].prompt_logprobs
    assert plp is not None and len(plp) == len(prompt)
    assert plp[0] is None
    assert [e.token_id for e in plp[1:]] == prompt[1:]  # type: ignore[union-attr]


def test_prefix_cache_changes_nothing_but_the_work_done() -> None:
    system = [2 + (i * 7) % 60 for i in range(40)]
    prompts = [[*system, 3 + i, 4 + i, 5 + i] for i in range(6)]

    def run(cache: bool) -> tuple[list[dict[int, str]], list[int], int]:
        h = Harness(budget=16, prefix_cache=cache)
        for i, p in enumerate(prompts):
            h.submit(f"r{i}", p, max_tokens=6)
        h.run()
        cached = [h.outputs[f"r{i}"][-1].num_cached_tokens for i in range(6)]
        return [h.texts(f"r{i}") for i in range(6)], cached, sum(h.runner.batch_sizes)

    with_cache, cached, work = run(True)
    without, none_cached, work_without = run(False)
    assert with_cache == without
    assert none_cached == [0] * 6
    assert cached[0] == 0 and all(40 - MIN_COPY_GAIN < c <= 40 for c in cached[1:])
    assert work_without - work == sum(cached)  # every cached token is a token not computed


def test_kv_full_on_a_fork_step_recomputes_leader_and_children() -> None:
    h = Harness()
    calls = {"n": 0}
    decode = h.runner.decode

    def flaky(batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:  # the step that completes the prompt and forks
            raise KVCacheFull("simulated")
        return decode(batch)

    h.runner.decode = flaky  # type: ignore[method-assign]
    h.submit("r", PROMPTS[2], n=3, max_tokens=8)
    h.run()
    texts = h.texts("r")
    assert texts[0] == texts[1] == texts[2] == alone(PROMPTS[2], max_tokens=8)[0]
    assert h.engine.scheduler.used_cells == 0


# -- speculative decoding (prompt lookup) ---------------------------------------------------

REPEATING = [[2 + (i * 3 + j) % 9 for j in range(20 + 5 * i)] for i in range(4)]
SPEC_CASES: list[dict[str, object]] = [
    {"temperature": 0.0},
    {"temperature": 0.9, "seed": 7},
    {"temperature": 0.0, "repetition_penalty": 1.3, "presence_penalty": 0.5},
    {"temperature": 0.8, "seed": 3, "top_p": 0.9, "n": 3},
    {"temperature": 0.0, "logprobs": 2, "stop": ["ab"]},
]


def _run_all(spec_tokens: int, spec_max_seqs: int, budget: int, params: dict[str, object]):
    h = Harness(
        budget=budget, spec_tokens=spec_tokens, spec_max_seqs=spec_max_seqs, repeat_period=6
    )
    for i, p in enumerate(REPEATING):
        h.submit(f"r{i}", p, **{"max_tokens": 40, **params})
    h.run()
    got = {}
    for i in range(len(REPEATING)):
        rid = f"r{i}"
        lps = [
            (lp.token_id, round(lp.logprob, 5))
            for o in h.outputs[rid]
            for d in o.deltas
            for lp in d.logprobs
        ]
        got[rid] = (h.texts(rid), h.finish(rid), lps)
    return got, h


def test_speculation_changes_only_the_number_of_steps() -> None:
    for params in SPEC_CASES:
        plain, h0 = _run_all(0, 1, 64, params)
        for max_seqs, budget in ((1, 64), (8, 64), (8, 9)):
            spec, h = _run_all(4, max_seqs, budget, params)
            assert spec == plain, (params, max_seqs, budget)
            assert h.engine.scheduler.used_cells == 0
            if max_seqs == 8:  # all four requests speculate together
                assert h.engine.spec_accepted > 0, params
                assert h.engine.spec_accepted < h.engine.spec_proposed, params  # some rejected
            if budget == 64 and max_seqs == 8 and params is SPEC_CASES[0]:
                assert h.engine.steps < h0.engine.steps


def test_speculation_stops_exactly_at_max_tokens() -> None:
    prompt = [2 + j % 6 for j in range(30)]
    for max_tokens in (1, 2, 3, 5, 9):
        h0 = Harness(repeat_period=6)
        h0.submit("x", prompt, max_tokens=max_tokens)
        h0.run()
        h = Harness(spec_tokens=6, repeat_period=6)
        h.submit("x", prompt, max_tokens=max_tokens)
        h.run()
        assert h.texts("x") == h0.texts("x")
        assert h.outputs["x"][-1].deltas[-1].finish_reason == "length"
        assert sum(len(d.token_ids) for o in h.outputs["x"] for d in o.deltas) == max_tokens


# -- grammar-constrained sequences ----------------------------------------------------------


def _grammar(runner: FakeRunner, **fields: object) -> CompiledGrammar:
    constraint = grammar_for(**fields)  # type: ignore[arg-type]
    assert constraint is not None
    return GrammarCompiler(make_tokenizer(runner.info)).compile(constraint)


def test_constrained_and_unconstrained_share_a_batch() -> None:
    h = Harness(budget=64)
    ref = {f"r{i}": alone(p, max_tokens=30) for i, p in enumerate(PROMPTS[:3])}
    regex = "(ab|cd)+9"
    grammar = _grammar(h.runner, guided_regex=regex)
    for i, p in enumerate(PROMPTS[:3]):
        h.submit(f"r{i}", p, max_tokens=30)
        p2 = SamplingParams(max_tokens=30, temperature=1.0, seed=i, n=2)
        h.add(EngineRequest(f"g{i}", p, p2, grammar=grammar))
    h.run()
    for i in range(3):
        assert h.texts(f"r{i}") == ref[f"r{i}"]  # unconstrained: untouched by the masks
        texts = h.texts(f"g{i}")
        assert len(texts) == 2
        for text in texts.values():
            assert re.fullmatch(regex, text), text
        # The grammar ends the sequence itself, without sampling an EOS.
        assert set(h.finish(f"g{i}").values()) == {"stop"}


def test_a_repeated_tool_call_stops_the_sequence() -> None:
    """Calls of a function with one possible argument can only repeat: the engine stops the
    sequence once the repeat is complete, instead of running to ``max_tokens``."""
    h = Harness()
    # Some of the fake model's letters become the characters a call needs.
    pieces = list(h.runner.info.token_pieces)
    for letter, char in zip("ABCDEFG", '<>\n{}"/', strict=True):
        pieces[pieces.index(letter.encode())] = char.encode()
    # (Another fingerprint: llguidance tokenizers are cached per model.)
    info = dataclasses.replace(h.runner.info, token_pieces=pieces, fingerprint="fp_fake_calls")
    h.runner.info = info
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"x": {"enum": ["a"]}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
    }
    grammar = _grammar(h.runner, tools=[tool], tool_choice="required")
    h.engine = EngineCore(h.runner, h.config)  # sees the new vocabulary
    # EOS is allowed after each call; biased away, the model opens call after call.
    params = SamplingParams(max_tokens=400, temperature=0.0, logit_bias={EOS: -100.0})
    h.add(EngineRequest("t", PROMPTS[1], params, grammar=grammar))
    h.run()
    call = '<tool_call>\n{"name": "f", "arguments": {"x": "a"}}\n</tool_call>'
    assert h.texts("t") == {0: call + "\n" + call.removesuffix("\n</tool_call>")}
    assert h.finish("t") == {0: "stop"}


def test_queue_time_is_sent_once_from_arrival_to_the_first_step() -> None:
    now = [100.0]
    h = Harness(max_num_seqs=1)
    h.engine = EngineCore(h.runner, h.config, clock=lambda: now[0])
    h.submit("a", PROMPTS[1], max_tokens=3)
    h.submit("b", PROMPTS[2], max_tokens=3)  # waits: one slot
    while h.engine.has_work:
        h.step()
        now[0] += 0.5  # each step takes half a second
    waits = {
        rid: [o.queue_time for o in outs if o.queue_time is not None]
        for rid, outs in h.outputs.items()
    }
    assert waits["a"] == [0.0]
    # b ran once a's three tokens were done: its first step started 3 steps later.
    assert len(waits["b"]) == 1 and waits["b"][0] >= 1.5
