"""Fleet simulator: tokenmill's benchmark workloads on N simulated engine replicas behind a router.

Compares routing policies (round-robin, power of two choices, prefix-aware) at fleet sizes
this machine cannot run. Discrete-event, deterministic for a seed, no model loaded.

What it models:
- Clients: a closed loop of ``clients-per-replica x replicas`` clients, each sending its next
  request the moment the previous one finishes (a multi-turn conversation sends its turns one
  after another, each resending the history with the answers), until
  ``requests-per-replica x replicas`` requests (conversations, as in ``tokenmill bench``) were
  sent. Prompts come from ``tokenmill.bench.workloads.make_requests``, so a seed gives the
  same workload to every policy.
- Tokens: a cheap deterministic stand-in tokenizer (words and punctuation, long words split,
  about 1.2 tokens per word of prose) over the ChatML rendering of the messages, so a shared
  system prompt or a conversation's history is a shared token prefix. An answer is exactly
  ``max_tokens`` pseudo-random ids seeded per turn (no early stop).
- Each replica is one engine like tokenmill's scheduler: ``max_num_seqs`` slots, a token budget
  per step (one decode token per running sequence first, then prompt chunks of running
  sequences, then FCFS admissions into the lowest free slot); a request whose prefix another
  sequence is still computing waits for it. Prefix cache in two tiers of chained 16-token
  block hashes (``tokenmill.fleet.router.block_hashes``): each slot keeps the blocks of its
  last sequence until the slot is taken, and then they go to a host-memory tier, an LRU of
  blocks with a capacity in tokens. A prompt's cached tokens are its longest run of leading
  blocks held by a slot or the host tier; only the rest is prefilled.
- Step time: ``decode_ms(sequences decoding) + prefill tokens x PREFILL_MS_PER_TOKEN +
  restored tokens x RESTORE_MS_PER_TOKEN``, from measurements on this machine (see constants).
- Routers: ``round-robin``; ``pow2`` (less loaded of two random replicas); ``prefix``
  (``tokenmill.fleet.router.PrefixPolicy`` as-is: the first replica of its first rank, loads
  being the requests each replica has been sent and not yet finished).

What it leaves out: the network and the router's own latency (a request reaches its replica
the instant it is sent); tokenizer differences (block boundaries fall elsewhere with a real
BPE, and matches are whole blocks where tokenmill matches single tokens); llama.cpp's per-slot
KV layout (slot copies and their 32-token threshold, KV cell limits, preemption); the host
tier's real entries, whole saved sequences that duplicate a shared prefix where this tier
stores it once, and skipped when a slot loses fewer than 64 tokens; think time between turns;
answers that stop before ``max_tokens``; step times that grow with context length.

Command (the default run; every flag shown at its default):
    .venv/bin/python benchmarks/fleet_sim.py --workload shared-prefix,multi-turn \
        --replicas 2,8,16,64 --policy round-robin,pow2,prefix --seed 1 \
        --requests-per-replica 64 --clients-per-replica 16 --host-cache-tokens 91180
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import re
import sys
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tokenmill.bench.workloads import BenchRequest, make_requests
from tokenmill.fleet.router import BLOCK, PrefixPolicy

# -- The step-time model: docs/benchmarks.md, SmolLM2-135M on this machine, 2 threads. -----------
# A bare llama_decode loop, flash attention off (tokenmill's default), ms per step by the number
# of sequences decoding ("What limits us, as measured"; the 7.5/14.5/25.5/48.6 ms run).
DECODE_MS: tuple[tuple[int, float], ...] = ((0, 0.0), (1, 7.5), (2, 14.5), (4, 25.5), (8, 48.6))
# Prefill runs at about 200 tokens/s (a 1,024-token prefill took 4.0-4.6 s).
PREFILL_MS_PER_TOKEN = 5.0
# Restoring a saved prefix from host memory costs milliseconds: core/hostcache.py puts a
# thousand tokens at tens of ms. Charged for host-tier hits only; a slot's KV is reused in place.
RESTORE_MS_PER_TOKEN = 0.02

# -- One replica: tokenmill's defaults (config.py). ------------------------------------------------
MAX_NUM_SEQS = 8
MAX_BATCH_TOKENS = 512
KV_BYTES_PER_TOKEN = 23 * 1024  # a llama.cpp sequence state of the embedded model
HOST_CACHE_TOKENS = 2 * 2**30 // KV_BYTES_PER_TOKEN  # host_cache_mib = 2048: 91,180 tokens

VOCAB = 49152  # SmolLM2's vocabulary size: the range of the stand-in token ids

WORKLOADS = ("shared-prefix", "multi-turn")
REPLICAS = (2, 8, 16, 64)
POLICIES = ("round-robin", "pow2", "prefix")

_START, _END = 1, 0  # event kinds; at equal times every step end goes before any step start


def decode_ms(seqs: int) -> float:
    """ms of a step decoding ``seqs`` sequences: the measured table interpolated, extrapolated
    linearly past its last point."""
    for (n0, ms0), (n1, ms1) in itertools.pairwise(DECODE_MS):
        if seqs <= n1:
            return ms0 + (ms1 - ms0) * (seqs - n0) / (n1 - n0)
    (n0, ms0), (n1, ms1) = DECODE_MS[-2], DECODE_MS[-1]
    return ms1 + (ms1 - ms0) * (seqs - n1) / (n1 - n0)


def step_ms(decoding: int, prefill_tokens: int, restored_tokens: int = 0) -> float:
    return (
        decode_ms(decoding)
        + prefill_tokens * PREFILL_MS_PER_TOKEN
        + restored_tokens * RESTORE_MS_PER_TOKEN
    )


# -- Tokens ---------------------------------------------------------------------------------------

# Special tokens, newlines, words with their leading space, punctuation, other whitespace. Every
# piece ends where a message does, so tokenizing messages one by one and concatenating gives the
# tokens of the whole rendered conversation.
_PIECE = re.compile(r"<\|im_(?:start|end)\|>|\n|[ ]?\w+|[ ]?[^\w\s]|\s")
# Words of more than this many characters split (their leading space stays with the first
# part): 1.2 tokens per word on the workloads' prose, 1.4 on chat questions with the template.
_PIECE_CHARS = 6


@lru_cache(maxsize=8192)
def tokenize(text: str) -> tuple[int, ...]:
    """Stable ids (crc32, not ``hash``, which is salted per process for strings)."""
    out: list[int] = []
    for piece in _PIECE.findall(text):
        cut = _PIECE_CHARS + piece.startswith(" ")
        if piece.startswith("<|") or len(piece) <= cut:
            out.append(zlib.crc32(piece.encode()) % VOCAB)
            continue
        out.append(zlib.crc32(piece[:cut].encode()) % VOCAB)
        for i in range(cut, len(piece), _PIECE_CHARS):
            out.append(zlib.crc32(piece[i : i + _PIECE_CHARS].encode()) % VOCAB)
    return tuple(out)


def render_message(role: str, content: str) -> tuple[int, ...]:
    return tokenize(f"<|im_start|>{role}\n{content}<|im_end|>\n")


ASSISTANT_HEADER = tokenize("<|im_start|>assistant\n")
END_OF_TURN = tokenize("<|im_end|>\n")


def prompt_tokens(body: dict[str, Any]) -> list[int]:
    """A chat body's messages rendered with the ChatML template, or a completion's prompt."""
    if "messages" not in body:
        return list(tokenize(body["prompt"]))
    out: list[int] = []
    for m in body["messages"]:
        out += render_message(m["role"], m["content"])
    return out + list(ASSISTANT_HEADER)


def answer_tokens(seed: int, conversation: int, turn: int, n: int) -> list[int]:
    """``n`` pseudo-random ids, the same for a turn under every policy."""
    rng = random.Random(f"{seed}:{conversation}:{turn}")  # str seeds are stable across runs
    raw = memoryview(rng.randbytes(2 * n)).cast("H")
    return [t % VOCAB for t in raw]


def extend_hashes(tokens: Sequence[int], hashes: Sequence[int]) -> list[int]:
    """``router.block_hashes(tokens)`` given those of a prefix of ``tokens``: the same chain,
    computed for the new blocks only (a turn's prompt extends the previous turn's)."""
    out = list(hashes)
    h = out[-1] if out else 0
    for i in range(len(out), len(tokens) // BLOCK):
        h = hash((h, tuple(tokens[i * BLOCK : (i + 1) * BLOCK])))
        out.append(h)
    return out


# -- Requests -------------------------------------------------------------------------------------


class Turn:
    """One routed request: a prompt, its block hashes, and the blocks the slot holds after it."""

    __slots__ = (
        "answer", "conv", "first_token", "hashes", "history_hashes", "max_tokens", "prompt", "sent"
    )  # fmt: skip

    def __init__(
        self, conv: Conversation, prompt: list[int], hashes: list[int], sent: float
    ) -> None:
        self.conv, self.prompt, self.hashes, self.sent = conv, prompt, hashes, sent
        self.max_tokens = conv.max_tokens
        self.first_token = math.nan
        self.answer = answer_tokens(conv.seed, conv.index, conv.turn, self.max_tokens)
        # After the turn the slot holds the prompt and the answer but its last token (sampled,
        # never decoded): those are the blocks it leaves in the cache.
        self.history_hashes = extend_hashes(prompt + self.answer[:-1], hashes)


@dataclass
class Conversation:
    """A benchmark request: one turn, or a chat whose follow-ups resend the growing history."""

    index: int
    seed: int
    max_tokens: int
    follow_ups: tuple[str, ...]
    turn: int = 0  # follow-ups sent so far

    def first(self, body: dict[str, Any], now: float) -> Turn:
        prompt = prompt_tokens(body)
        return Turn(self, prompt, extend_hashes(prompt, []), now)

    def next(self, done: Turn, now: float) -> Turn | None:
        """The next turn: the previous prompt, its answer, then the user's next message."""
        if self.turn >= len(self.follow_ups):
            return None
        follow = self.follow_ups[self.turn]
        self.turn += 1
        prompt = done.prompt + done.answer + list(END_OF_TURN)
        prompt += render_message("user", follow) + ASSISTANT_HEADER
        return Turn(self, prompt, extend_hashes(prompt, done.history_hashes), now)


# -- One replica ----------------------------------------------------------------------------------


class Seq:
    """A turn admitted to a slot."""

    __slots__ = ("cached", "computed", "generated", "prompt_len", "slot", "turn")

    def __init__(self, turn: Turn, cached: int, slot: int) -> None:
        self.turn, self.cached, self.slot = turn, cached, slot
        self.prompt_len = len(turn.prompt)
        self.computed = cached  # prompt tokens whose KV exists
        self.generated = 0

    @property
    def prefilled(self) -> bool:
        return self.computed == self.prompt_len


@dataclass
class Step:
    """``steps`` engine steps of ``ms`` each, planned at ``start``. Several only when all of them
    just decode the same sequences: simulated as one event, cut short if a request arrives
    that a free slot could take (``interruptible``)."""

    start: float
    ms: float
    steps: int
    decoding: list[Seq]
    chunks: list[tuple[Seq, int]]
    interruptible: bool
    version: int

    @property
    def end(self) -> float:
        return self.start + self.ms * self.steps


class Replica:
    """One engine: slots, a waiting queue, a step budget and a two-tier prefix cache.

    Each slot holds the blocks of the last sequence that used it (as far as computed), until
    another takes it; the host tier is an LRU of blocks with a token capacity, filled with a
    slot's blocks when the slot is taken. Blocks are chained hashes, so a set of them is a
    prefix tree and the host tier stores a prefix shared by many prompts once (llama.cpp's
    saved states do not share: see the module docstring)."""

    def __init__(
        self,
        host_cache_tokens: int = HOST_CACHE_TOKENS,
        max_num_seqs: int = MAX_NUM_SEQS,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self.max_num_seqs, self.max_batch_tokens = max_num_seqs, max_batch_tokens
        self.host_blocks = host_cache_tokens // BLOCK
        self.host: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self.slots: list[list[int]] = [[] for _ in range(max_num_seqs)]  # blocks held, in order
        self.slot_sets: list[set[int]] = [set() for _ in range(max_num_seqs)]
        self.free_slots = list(range(max_num_seqs))
        self.pending: dict[int, int] = {}  # blocks being computed -> sequences computing them
        self.waiting: deque[Turn] = deque()
        self.running: list[Seq] = []
        self.step: Step | None = None
        self.start_queued = False
        self._version = 0
        self.host_hits = self.evicted_blocks = 0  # lifetime counts, for stats and tests

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def lookup(self, hashes: Sequence[int], prompt_len: int) -> tuple[int, bool, bool]:
        """(cached tokens, whether they come from the host tier, whether a running sequence is
        computing the next block). At least one prompt token is computed, for its logits."""
        limit = min((prompt_len - 1) // BLOCK, len(hashes))
        in_slot = 0
        for held in self.slot_sets:
            n = 0
            while n < limit and hashes[n] in held:
                n += 1
            in_slot = max(in_slot, n)
        in_host = 0
        while in_host < limit and hashes[in_host] in self.host:
            in_host += 1
        n = max(in_slot, in_host)
        return n * BLOCK, in_host > in_slot, n < len(hashes) and hashes[n] in self.pending

    def save(self, hashes: Sequence[int]) -> None:
        """Put these blocks in the host tier (or mark them used). Touched last to first, so a
        prompt's first block is the most recently used: eviction takes chains from their tails
        and never leaves blocks behind a missing prefix, where no lookup could reach them."""
        if not self.host_blocks:
            return
        host = self.host
        for h in reversed(hashes):
            host[h] = None
            host.move_to_end(h)
        while len(host) > self.host_blocks:
            host.popitem(last=False)
            self.evicted_blocks += 1

    def _hold(self, slot: int, hashes: list[int]) -> None:
        self.slots[slot], self.slot_sets[slot] = hashes, set(hashes)

    def _admit(self, turn: Turn, cached: int, from_host: bool) -> Seq:
        """Take the lowest free slot, as tokenmill does, saving what it held to the host tier;
        a host hit is restored into it (and becomes the most recently used entry)."""
        slot = min(self.free_slots)
        self.free_slots.remove(slot)
        self.save(self.slots[slot])
        kept = turn.hashes[: cached // BLOCK]
        if from_host:
            self.host_hits += 1
            self.save(kept)
        self._hold(slot, list(kept))
        for h in turn.hashes[len(kept) :]:
            self.pending[h] = self.pending.get(h, 0) + 1
        seq = Seq(turn, cached, slot)
        self.running.append(seq)
        return seq

    def plan(self, now: float) -> Step | None:
        """The next step, as tokenmill's scheduler builds it."""
        budget = self.max_batch_tokens
        decoding = [s for s in self.running if s.prefilled]
        budget -= len(decoding)
        chunks: list[tuple[Seq, int]] = []
        for s in self.running:
            if budget > 0 and not s.prefilled:
                n = min(budget, s.prompt_len - s.computed)
                chunks.append((s, n))
                budget -= n
        restored = 0
        while budget > 0 and self.waiting and self.free_slots:
            turn = self.waiting[0]
            cached, from_host, in_progress = self.lookup(turn.hashes, len(turn.prompt))
            if in_progress:  # waiting a step or two beats computing the same prefix twice
                break
            seq = self._admit(self.waiting.popleft(), cached, from_host)
            n = min(budget, seq.prompt_len - cached)
            chunks.append((seq, n))
            budget -= n
            restored += cached if from_host else 0
        if not decoding and not chunks:
            return None
        prefill = sum(n for _, n in chunks)
        ms = step_ms(len(decoding), prefill, restored)
        self._version += 1
        if chunks:
            return Step(now, ms, 1, decoding, chunks, False, self._version)
        # Only decodes: nothing changes until the first of them finishes, unless a request
        # arrives while a slot is free (with a slot free, nothing is waiting).
        steps = min(s.turn.max_tokens - s.generated for s in decoding)
        return Step(now, ms, steps, decoding, chunks, bool(self.free_slots), self._version)

    def cut(self, now: float) -> bool:
        """A request arrived at ``now`` during an interruptible run of decode steps: end it with
        the step in progress. Returns whether the end moved."""
        step = self.step
        assert step is not None and step.interruptible
        done = max(1, math.ceil((now - step.start) / step.ms - 1e-9))
        if done >= step.steps:
            return False
        self._version += 1
        step.steps, step.version = done, self._version
        return True

    def complete(self, step: Step, end: float) -> list[Seq]:
        """Apply a step's results at ``end``; returns the sequences that finished."""
        for s in step.decoding:
            s.generated += step.steps
        for s, n in step.chunks:
            before = s.computed // BLOCK
            s.computed += n
            new = s.turn.hashes[before : s.computed // BLOCK]
            for h in new:
                left = self.pending[h] - 1
                if left:
                    self.pending[h] = left
                else:
                    del self.pending[h]
            # Others may reuse these blocks from now on (the scheduler copies from running
            # slots too).
            self.slots[s.slot].extend(new)
            self.slot_sets[s.slot].update(new)
            if s.prefilled:  # the step that computes a prompt's last token samples its first
                s.generated = 1
                s.turn.first_token = end
        finished = [s for s in self.running if s.prefilled and s.generated >= s.turn.max_tokens]
        for s in finished:
            self.running.remove(s)
            self._hold(s.slot, s.turn.history_hashes)
            self.free_slots.append(s.slot)
        return finished


# -- Routers --------------------------------------------------------------------------------------


class Router(Protocol):
    def choose(self, hashes: list[int], loads: list[int]) -> int: ...


class RoundRobin:
    def __init__(self) -> None:
        self.n = 0

    def choose(self, hashes: list[int], loads: list[int]) -> int:
        self.n += 1
        return (self.n - 1) % len(loads)


class PowerOfTwo:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, hashes: list[int], loads: list[int]) -> int:
        picked = self.rng.sample(range(len(loads)), min(2, len(loads)))
        return min(picked, key=lambda r: loads[r])


class PrefixAware:
    """``PrefixPolicy`` as the fleet's router uses it: the first replica of the first rank."""

    def __init__(self, rng: random.Random) -> None:
        self.policy = PrefixPolicy(rng=rng)

    def choose(self, hashes: list[int], loads: list[int]) -> int:
        ranks = self.policy.rank(hashes, dict(enumerate(loads)))
        replica = ranks[0][0]
        assert isinstance(replica, int)
        self.policy.routed(replica, hashes)
        return replica


def make_router(policy: str, seed: int) -> Router:
    if policy == "round-robin":
        return RoundRobin()
    if policy == "pow2":
        return PowerOfTwo(random.Random(seed))
    if policy == "prefix":
        return PrefixAware(random.Random(seed))
    raise ValueError(f"unknown policy {policy!r}")


# -- The simulation -------------------------------------------------------------------------------


@dataclass
class Totals:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    last_finish: float = 0.0


class FleetSim:
    """One (workload, replicas, policy) run. Times are in ms."""

    def __init__(
        self,
        requests: list[BenchRequest],
        replicas: int,
        policy: str,
        seed: int,
        clients: int,
        host_cache_tokens: int = HOST_CACHE_TOKENS,
    ) -> None:
        self.requests, self.seed, self.clients = requests, seed, clients
        self.replicas = [Replica(host_cache_tokens) for _ in range(replicas)]
        self.router = make_router(policy, seed)
        self.loads = [0] * replicas  # requests sent to each replica and not finished
        self.routed = [0] * replicas
        self.totals = Totals()
        self._next_request = 0
        self._events: list[tuple[float, int, int, int, int]] = []
        self._counter = 0  # ties at equal times: in the order pushed

    def run(self) -> Totals:
        for _ in range(min(self.clients, len(self.requests))):
            self._next_conversation(0.0)
        while self._events:
            t, kind, _, r, version = heapq.heappop(self._events)
            rep = self.replicas[r]
            if kind == _START:
                rep.start_queued = False
                if rep.step is None:
                    self._start(r, t)
                continue
            step = rep.step
            if step is None or step.version != version:
                continue  # a run of decode steps cut short: its new end is queued
            rep.step = None
            for seq in rep.complete(step, t):
                self._finished(r, seq, t)
            self._kick(r, t)
        return self.totals

    def _push(self, t: float, kind: int, r: int, version: int = 0) -> None:
        self._counter += 1
        heapq.heappush(self._events, (t, kind, self._counter, r, version))

    def _start(self, r: int, now: float) -> None:
        rep = self.replicas[r]
        rep.step = rep.plan(now)
        if rep.step is not None:
            self._push(rep.step.end, _END, r, rep.step.version)

    def _kick(self, r: int, now: float) -> None:
        """Replica ``r`` may have new work: start a step now, or cut a run of decodes short."""
        rep = self.replicas[r]
        if rep.step is not None:
            if rep.step.interruptible and rep.waiting and rep.cut(now):
                self._push(rep.step.end, _END, r, rep.step.version)
        elif rep.has_work and not rep.start_queued:
            rep.start_queued = True
            self._push(now, _START, r)

    def _send(self, turn: Turn, now: float) -> None:
        r = self.router.choose(turn.hashes, self.loads)
        self.loads[r] += 1
        self.routed[r] += 1
        self.replicas[r].waiting.append(turn)
        self._kick(r, now)

    def _next_conversation(self, now: float) -> None:
        if self._next_request >= len(self.requests):
            return
        i = self._next_request
        self._next_request += 1
        req = self.requests[i]
        conv = Conversation(i, self.seed, req.body["max_tokens"], req.follow_ups)
        self._send(conv.first(req.body, now), now)

    def _finished(self, r: int, seq: Seq, now: float) -> None:
        turn, totals = seq.turn, self.totals
        self.loads[r] -= 1
        totals.prompt_tokens += seq.prompt_len
        totals.cached_tokens += seq.cached
        totals.output_tokens += turn.max_tokens
        totals.ttft_ms.append(turn.first_token - turn.sent)
        totals.last_finish = max(totals.last_finish, now)
        # The same client sends its next turn at once, or starts its next conversation.
        nxt = turn.conv.next(turn, now)
        if nxt is not None:
            self._send(nxt, now)
        else:
            self._next_conversation(now)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def simulate(
    workload: str,
    replicas: int,
    policy: str,
    seed: int = 1,
    requests_per_replica: int = 64,
    clients_per_replica: int = 16,
    host_cache_tokens: int = HOST_CACHE_TOKENS,
) -> dict[str, Any]:
    """One row of the report."""
    requests = make_requests(workload, "sim", requests_per_replica * replicas, None, seed)
    sim = FleetSim(
        requests, replicas, policy, seed, clients_per_replica * replicas, host_cache_tokens
    )
    t = sim.run()
    mean_routed = sum(sim.routed) / replicas
    return {
        "workload": workload,
        "replicas": replicas,
        "policy": policy,
        "requests": len(requests),
        "turns": len(t.ttft_ms),
        "hit_rate": t.cached_tokens / t.prompt_tokens if t.prompt_tokens else 0.0,
        "out_tok_s": t.output_tokens / (t.last_finish / 1000) if t.last_finish else 0.0,
        "ttft_p50_ms": percentile(t.ttft_ms, 50),
        "ttft_p99_ms": percentile(t.ttft_ms, 99),
        "balance": max(sim.routed) / mean_routed if mean_routed else 0.0,
        "sim_seconds": t.last_finish / 1000,
        "prompt_tokens": t.prompt_tokens,
        "cached_tokens": t.cached_tokens,
        "output_tokens": t.output_tokens,
        "host_hits": sum(r.host_hits for r in sim.replicas),
        "evicted_blocks": sum(r.evicted_blocks for r in sim.replicas),
        "prefix_routed": (
            sim.router.policy.prefix_routed if isinstance(sim.router, PrefixAware) else None
        ),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | replicas | policy | turns | hit rate | out tok/s | TTFT p50 ms "
        "| TTFT p99 ms | balance (max/mean) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['replicas']} | {r['policy']} | {r['turns']} "
            f"| {r['hit_rate']:.1%} | {r['out_tok_s']:.0f} | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f} | {r['balance']:.2f} |"
        )
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default=",".join(WORKLOADS))
    ap.add_argument("--replicas", default=",".join(map(str, REPLICAS)))
    ap.add_argument("--policy", default=",".join(POLICIES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--requests-per-replica", type=int, default=64)
    ap.add_argument("--clients-per-replica", type=int, default=16)
    ap.add_argument("--host-cache-tokens", type=int, default=HOST_CACHE_TOKENS)
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    rows = []
    began = time.perf_counter()
    for workload in _names(args.workload):
        for replicas in map(int, _names(args.replicas)):
            for policy in _names(args.policy):
                row = simulate(
                    workload,
                    replicas,
                    policy,
                    args.seed,
                    args.requests_per_replica,
                    args.clients_per_replica,
                    args.host_cache_tokens,
                )
                rows.append(row)
                print(
                    f"{workload} x{replicas} {policy}: {time.perf_counter() - began:.1f} s",
                    file=sys.stderr,
                )
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
