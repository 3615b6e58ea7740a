"""Benchmark workloads: prompts generated from a seed, nothing downloaded.

Each workload yields request bodies for an OpenAI-compatible server. The words come from small
lists shipped here, so the same seed gives the same prompts on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_TOPICS = (
    "photosynthesis", "the French revolution", "black holes", "compound interest", "volcanoes",
    "the immune system", "machine learning", "the water cycle", "plate tectonics", "jazz",
    "the printing press", "quantum computing", "honey bees", "the Roman empire", "electricity",
    "climate change", "the stock market", "DNA replication", "the internet", "coral reefs",
)  # fmt: skip
_ASKS = (
    "Explain {t} to a ten-year-old.", "Give three surprising facts about {t}.",
    "Write a short poem about {t}.", "What are the main open questions about {t}?",
    "Summarize the history of {t} in a few sentences.", "How would you teach {t} in one lesson?",
)  # fmt: skip
_WORDS = (
    "system", "value", "order", "market", "process", "energy", "signal", "pattern", "model",
    "record", "report", "network", "change", "result", "method", "factor", "policy", "region",
    "source", "output", "memory", "budget", "growth", "object", "stream", "format", "sample",
    "client", "server", "request", "cluster", "vector", "matrix", "series", "filter", "engine",
)  # fmt: skip
_CODE_NAMES = (
    "parse", "load", "merge", "split", "render", "count", "fetch", "store", "sort", "scan",
)  # fmt: skip
_CODE_OBJECTS = (
    "config", "rows", "tokens", "users", "events", "paths", "scores", "items", "lines", "edges",
)  # fmt: skip


@dataclass(frozen=True)
class BenchRequest:
    """One request: the endpoint path and its JSON body (``stream`` is forced on). A
    conversation also carries the user's next messages: each is sent after the answer to the
    one before, with the whole history (the load generator appends the answers it got)."""

    path: str
    body: dict[str, Any]
    follow_ups: tuple[str, ...] = ()


def _chat(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    ask = rng.choice(_ASKS).format(t=rng.choice(_TOPICS))
    return BenchRequest(
        "/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": ask}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": rng.randrange(1 << 30),
        },
    )


def _code_prompt(rng: random.Random) -> str:
    name, obj = rng.choice(_CODE_NAMES), rng.choice(_CODE_OBJECTS)
    arg = rng.choice(_CODE_OBJECTS)
    return (
        f"import json\nfrom pathlib import Path\n\n\ndef {name}_{obj}({arg}, limit=10):\n"
        f'    """{name.capitalize()} the {obj} from {arg}, at most limit of them."""\n'
        f"    result = []\n    for item in {arg}:\n"
    )


def _autocomplete(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    return BenchRequest(
        "/completions",
        {"model": model, "prompt": _code_prompt(rng), "max_tokens": max_tokens, "temperature": 0},
    )


def _notes(rng: random.Random, n_words: int) -> str:
    sentences = []
    words = 0
    while words < n_words:
        k = rng.randint(8, 16)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(k))
        sentences.append(sentence.capitalize() + ".")
        words += k
    return " ".join(sentences)


def _long_prompt(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    # ~1,000-1,500 words of notes: roughly 1-2k tokens with the usual BPE vocabularies.
    notes = _notes(rng, rng.randint(1000, 1500))
    return BenchRequest(
        "/chat/completions",
        {
            "model": model,
            "messages": [
                {"role": "user", "content": f"Summarize these notes:\n\n{notes}"},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": rng.randrange(1 << 30),
        },
    )


_SHARED_SYSTEM: dict[int, str] = {}


def _shared_prefix(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    # One long system prompt for every user (fixed per process), different questions.
    system = _SHARED_SYSTEM.setdefault(
        0, "You are the support assistant. Reference:\n" + _notes(random.Random(7), 900)
    )
    ask = rng.choice(_ASKS).format(t=rng.choice(_TOPICS))
    return BenchRequest(
        "/chat/completions",
        {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": ask}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": rng.randrange(1 << 30),
        },
    )


_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 30},
        "interests": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "interests", "member"],
    "additionalProperties": False,
}


def _json_ask(rng: random.Random, model: str, max_tokens: int) -> dict[str, Any]:
    topic = rng.choice(_TOPICS)
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": f"Describe a fictional person who loves {topic}, as a JSON object "
                "with name, age, city, interests and member.",
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": rng.randrange(1 << 30),
    }


def _json_free(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    """The guided-json prompts without the constraint: the baseline it is compared with."""
    return BenchRequest("/chat/completions", _json_ask(rng, model, max_tokens))


def _guided_json(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    return BenchRequest(
        "/chat/completions", {**_json_ask(rng, model, max_tokens), "guided_json": _RECORD_SCHEMA}
    )


_FOLLOW_UPS = (
    "Can you say that more simply?", "Give me an example.", "Why is that?",
    "What is a common misconception about this?", "Summarize that in one sentence.",
    "How does this relate to everyday life?", "What should I read next about it?",
    "Can you go into more detail on the second point?", "What would an expert add?",
)  # fmt: skip


def _multi_turn(rng: random.Random, model: str, max_tokens: int) -> BenchRequest:
    """A conversation of 4-8 turns: a chat question, then follow-ups that resend the growing
    history (where a server's prefix cache pays or does not)."""
    first = _chat(rng, model, max_tokens)
    turns = rng.randint(4, 8)
    return BenchRequest(first.path, first.body, tuple(rng.sample(_FOLLOW_UPS, turns - 1)))


_MIX = (("chat", 5), ("autocomplete", 4), ("long-prompt", 1))  # fixed proportions, of 10


def _mixed(rng: random.Random, n: int, model: str, max_tokens: int | None) -> list[BenchRequest]:
    """Chat, autocomplete and long prompts at once, 5:4:1, in a seeded order; each kind with
    its own default length."""
    kinds = [kind for kind, share in _MIX for _ in range(share)]
    picks = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(picks)
    return [WORKLOADS[k](rng, model, max_tokens or DEFAULT_MAX_TOKENS[k]) for k in picks]


WORKLOADS: dict[str, Callable[[random.Random, str, int], BenchRequest]] = {
    "chat": _chat,
    "autocomplete": _autocomplete,
    "long-prompt": _long_prompt,
    "shared-prefix": _shared_prefix,
    "multi-turn": _multi_turn,  # one "request" is a whole conversation (each turn a sample)
    # tokenmill only (the peer has no guided_json): constrained against unconstrained.
    "json": _json_free,
    "guided-json": _guided_json,
}
NAMES = (*WORKLOADS, "mixed")  # mixed: several of the above at once (_mixed)
DEFAULT_MAX_TOKENS = {
    "chat": 64,
    "autocomplete": 24,
    "long-prompt": 64,
    "shared-prefix": 64,
    "multi-turn": 64,
    "json": 96,
    "guided-json": 96,
}


def make_requests(
    workload: str, model: str, n: int, max_tokens: int | None, seed: int
) -> list[BenchRequest]:
    rng = random.Random(seed)
    if workload == "mixed":
        return _mixed(rng, n, model, max_tokens)
    build = WORKLOADS[workload]
    mt = max_tokens or DEFAULT_MAX_TOKENS[workload]
    return [build(rng, model, mt) for _ in range(n)]
