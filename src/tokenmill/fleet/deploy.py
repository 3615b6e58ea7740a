"""``tokenmill serve --config FILE --ray [ADDRESS]``: deploy the catalogue on Ray Serve.

One application: an ingress deployment (``ingress.py``, the HTTP API on Ray Serve's proxy at
``--host``/``--port``) and one deployment per model whose replicas each run one engine
(``replica.py``), routed by ``router.py``. The command stays in the foreground; SIGTERM or
SIGINT deletes the application (replicas finish what they run for up to
``--shutdown-timeout``) and finalizes the ledger.
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
import threading
from typing import Any

from tokenmill.config import ModelConfig, ServeConfig

log = logging.getLogger("tokenmill.fleet")
APP = "tokenmill"
# Ray Serve's own bound on requests a replica holds; ours (max_queue) answers first with a
# clear 503, so Ray's must not be lower.
INGRESS_MAX_ONGOING = 4096


def deployment_name(model: ModelConfig) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", model.model_id)


ROUTERS = ("prefix", "pow2", "round-robin")


def model_options(model: ModelConfig, config: ServeConfig, router: str) -> dict[str, Any]:
    """Ray Serve's options for ``model``'s deployment."""
    from ray.serve.config import RequestRouterConfig

    from tokenmill.fleet.ray_router import PrefixAwareRouter, RoundRobinRouter

    capacity = model.engine.capacity or INGRESS_MAX_ONGOING
    options: dict[str, Any] = {
        "name": deployment_name(model),
        # Cores are the operator's to share out with `threads`: Ray's CPU accounting would
        # refuse a second replica on a 2-core machine.
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": capacity,
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": config.shutdown_timeout,
    }
    if router != "pow2":  # pow2: Ray Serve's own default router
        cls = PrefixAwareRouter if router == "prefix" else RoundRobinRouter
        # (a pydantic model whose stubs mypy misreads)
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=cls  # type: ignore[arg-type]
        )
    if model.autoscaling is not None:
        a = model.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "initial_replicas": max(model.replicas, a.min_replicas, 1),
        }
    else:
        options["num_replicas"] = model.replicas
    return options


def build_app(config: ServeConfig, ingress_replicas: int, router: str = "prefix") -> Any:
    """The Ray Serve application graph: the ingress bound to every model's deployment."""
    from ray import serve

    from tokenmill.fleet.ingress import Ingress
    from tokenmill.fleet.replica import EngineReplica

    handles = {
        m.model_id: serve.deployment(**model_options(m, config, router))(EngineReplica).bind(
            config, m
        )
        for m in config.models
    }
    ingress = serve.deployment(
        name="ingress",
        num_replicas=ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=INGRESS_MAX_ONGOING,
    )(serve.ingress()(Ingress))
    return ingress.bind(config, handles)


def app_builder(args: dict[str, str]) -> Any:
    """The application for a Ray Serve config file (``serve deploy``, KubeRay's RayService):
    ``import_path: tokenmill.fleet.deploy:app_builder`` with ``args: {flags: "..."}``, the
    flags of ``tokenmill serve`` (``--config`` and the rest; the config file's http_options
    give the host and port). The ledger's crash recovery (``interrupted`` for rows a crash
    left pending) is not run here, since rows of requests live elsewhere look the same;
    ``tokenmill serve --ray`` runs it once before it deploys."""
    from tokenmill.cli import config_from_args, parse_serve

    ns = parse_serve(shlex.split(args.get("flags", "")))
    return build_app(config_from_args(ns), ns.ingress_replicas, ns.ray_router)


def run(
    config: ServeConfig, address: str | None, ingress_replicas: int = 1, router: str = "prefix"
) -> int:
    import ray
    from ray import serve

    from tokenmill import logs
    from tokenmill.server import build_tenancy, finalize_ledger

    logs.configure(config.log_level, config.log_format)
    # Crash leftovers are marked once, here, before any ingress replica writes rows.
    tenancy = build_tenancy(config)
    if ingress_replicas > 1 and not config.redis:
        log.warning(
            "%d ingress replicas without --redis: each counts rate limits on its own, so a "
            "key may get up to %d times its limits",
            ingress_replicas, ingress_replicas,
        )  # fmt: skip
    ray.init(address=address or None, namespace=APP, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(build_app(config, ingress_replicas, router), name=APP, route_prefix="/")
        names = ", ".join(m.model_id for m in config.models)
        url = f"http://{config.host}:{config.port}/v1"
        print(f"tokenmill ready: {url} serving {names} on Ray Serve", flush=True)
        stop.wait()
        log.info("stopping: deleting the Ray Serve application")
    finally:
        serve.delete(APP)
        serve.shutdown()
        ray.shutdown()
        finalize_ledger(tenancy.ledger)
    return 0
