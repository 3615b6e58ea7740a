"""Prometheus metrics, named after vLLM's (``vllm:x`` is ``tokenmill_x`` here) so that
dashboards translate; every series carries the served model's id in ``model``.

Three sources: the engines' own counters and levels, read when Prometheus scrapes
(``EngineCollector``); each request's timings and tokens, observed by its ``RequestTimer``
as its outputs reach the serving layer (so they are the same whether the engine runs in this
process or on a Ray replica); and one counter of HTTP answers by route and status, from the
request-log middleware. One registry per app: tests build many apps in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tokenmill.engine.messages import RequestOutput
    from tokenmill.serving.models import ServedModels

# A `_created` series per counter doubles the output for nothing Prometheus uses.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# Seconds. A 135M model on 2 cores: TTFT from ~40 ms, whole requests up to minutes.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0,
                   300.0, 600.0)  # fmt: skip
# Engine counters (``EngineClient.stats``) that are token counts of one kind or another are
# named as such; the rest keep their names.
_ENGINE_HELP = {
    "engine_steps": "Engine steps run (batches sent to llama.cpp).",
    "preemptions": "Sequences preempted for KV room (recomputed later).",
    "host_cache_saves": "Prefixes saved to the host-memory prefix cache.",
    "host_cache_restores": "Prefixes restored from the host-memory prefix cache.",
    "spec_draft_tokens": "Speculative draft tokens proposed.",
    "spec_accepted_tokens": "Speculative draft tokens accepted.",
    "request_failures": "Requests failed by an error in their own work.",
    "remote_requests": "Requests sent to Ray replicas.",
    "replica_losses": "Requests whose Ray replica died under them.",
}
_GAUGE_HELP = {
    "requests_running": "Requests with a sequence in the running batch.",
    "requests_waiting": "Requests waiting to be scheduled (queued, or preempted).",
    "kv_cache_usage_ratio": "Share of the KV cache's cells in use (1 = full).",
    "host_cache_bytes": "Bytes held by the host-memory prefix cache.",
    "requests_admitted": "Sequences admitted at the ingress and not yet finished.",
}


class Metrics:
    """The app's registry and the request-level series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, m = self.registry, ["model"]
        self.prompt_tokens = Counter(
            "tokenmill_prompt_tokens", "Prompt tokens of admitted requests.", m, registry=r
        )
        self.generation_tokens = Counter(
            "tokenmill_generation_tokens", "Tokens generated.", m, registry=r
        )
        self.prefix_queries = Counter(
            "tokenmill_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.", m, registry=r,
        )  # fmt: skip
        self.prefix_hits = Counter(
            "tokenmill_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not computed again).", m, registry=r,
        )  # fmt: skip
        self.success = Counter(
            "tokenmill_request_success",
            "Choices finished, by finish reason (stop, length, abort; error if the engine failed).",
            ["model", "finished_reason"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "tokenmill_rate_limited", "Requests refused with a 429 by a rate limit.", m, registry=r
        )
        self.ttft = Histogram(
            "tokenmill_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            m, buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "tokenmill_inter_token_latency_seconds",
            "Between consecutive generated tokens of a choice (one observation per token "
            "after the first; tokens arriving together split their interval).",
            m, buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "tokenmill_e2e_request_latency_seconds",
            "From an admitted request's arrival to its end, however it ended.",
            m, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            "tokenmill_request_queue_time_seconds",
            "In the engine's waiting queue before the first step that ran it.",
            m, buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.http = Counter(
            "tokenmill_http_requests",
            "HTTP answers by route template and status.",
            ["model", "method", "route", "status"], registry=r,
        )  # fmt: skip

    def watch(self, served: ServedModels) -> None:
        """Report the engines of ``served`` at every scrape."""
        self.registry.register(EngineCollector(served))

    def request(self, model: str) -> RequestTimer:
        return RequestTimer(self, model)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class RequestTimer:
    """One request's timings and counts; the request's meter feeds it its outputs."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.m, self.model = metrics, model
        self.arrival = time.monotonic()
        self.first_token: float | None = None
        self.last: dict[tuple[int, int], float] = {}  # per (engine request, choice)
        self.prompt_tokens = 0
        self.cached: dict[int, int] = {}  # per engine request: the last count reported
        self.admitted = self.closed = False

    def refused(self) -> None:
        self.m.rate_limited.labels(self.model).inc()

    def admit(self, prompt_tokens: int) -> None:
        self.admitted, self.prompt_tokens = True, prompt_tokens
        self.m.prompt_tokens.labels(self.model).inc(prompt_tokens)

    def observe(self, index: int, out: RequestOutput) -> None:
        now = time.monotonic()
        self.cached[index] = out.num_cached_tokens
        if out.queue_time is not None:
            self.m.queue_time.labels(self.model).observe(out.queue_time)
        new = 0
        for d in out.deltas:
            k = len(d.token_ids)
            if k:
                new += k
                self._intervals((index, d.index), k, now)
            if d.finish_reason is not None:
                self.m.success.labels(self.model, d.finish_reason).inc()
        if new:
            self.m.generation_tokens.labels(self.model).inc(new)
            if self.first_token is None:
                self.first_token = now
                self.m.ttft.labels(self.model).observe(now - self.arrival)

    def _intervals(self, choice: tuple[int, int], k: int, now: float) -> None:
        before = self.last.get(choice)
        self.last[choice] = now
        itl = self.m.itl.labels(self.model)
        if before is None:  # the choice's first tokens: the others came with it
            for _ in range(k - 1):
                itl.observe(0.0)
            return
        step = (now - before) / k
        for _ in range(k):
            itl.observe(step)

    def close(self) -> None:
        """At the request's end: the prefix cache's share and the whole latency; later
        calls do nothing."""
        if not self.admitted or self.closed:
            return
        self.closed = True
        self.m.prefix_queries.labels(self.model).inc(self.prompt_tokens)
        self.m.prefix_hits.labels(self.model).inc(sum(self.cached.values()))
        self.m.e2e.labels(self.model).observe(time.monotonic() - self.arrival)


class EngineCollector(Collector):
    """The engines' lifetime counters and current levels, read at scrape time."""

    def __init__(self, served: ServedModels) -> None:
        self.served = served

    def describe(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        return []  # the names depend on the engines: collected, not declared

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters: dict[str, CounterMetricFamily] = {}
        gauges: dict[str, GaugeMetricFamily] = {}
        for ctx in self.served:
            model = ctx.models.model_id
            for name, value in ctx.engine.stats().items():
                if name not in counters:
                    counters[name] = CounterMetricFamily(
                        f"tokenmill_{name}", _ENGINE_HELP.get(name, name), labels=["model"]
                    )
                counters[name].add_metric([model], value)
            for name, level in ctx.engine.gauges().items():
                if name not in gauges:
                    gauges[name] = GaugeMetricFamily(
                        f"tokenmill_{name}", _GAUGE_HELP.get(name, name), labels=["model"]
                    )
                gauges[name].add_metric([model], level)
        yield from counters.values()
        yield from gauges.values()
