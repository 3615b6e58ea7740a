"""Ray Serve request routers for the model deployments: ``PrefixPolicy`` (``router.py``), the
default, and round-robin to measure it against (``--ray-router``). Ray Serve keeps one per
deployment handle, so each ingress replica learns from the requests it routes itself."""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import FIFOMixin, RequestRouter

from tokenmill.fleet.router import PrefixPolicy, block_hashes, prompt_of


class PrefixAwareRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self.policy = PrefixPolicy(**kwargs)

    async def choose_replicas(
        self, candidate_replicas: list[Any], pending_request: Any = None
    ) -> list[list[Any]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id: r for r in candidate_replicas}
        # Ongoing requests per replica as last probed (None: not known yet).
        loads = {rid: self._replica_queue_len_cache.get(rid) for rid in by_id}
        prompt = prompt_of(pending_request.args) if pending_request is not None else []
        ranks = self.policy.rank(block_hashes(prompt), loads)
        return [[by_id[rid] for rid in rank] for rank in ranks]

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        self.policy.routed(replica_id, block_hashes(prompt_of(pending_request.args)))

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        self.policy.forget(replica_id)


class RoundRobinRouter(FIFOMixin, RequestRouter):
    """Each request to the next replica in turn: the baseline prefix-aware routing is
    measured against (docs/scale-out.md)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0

    async def choose_replicas(
        self, candidate_replicas: list[Any], pending_request: Any = None
    ) -> list[list[Any]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        self._turn += 1
        return [[ordered[self._turn % len(ordered)]]]
