"""What ``serve --ray`` asks of Ray Serve for each model, from the catalogue (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenmill.config import Autoscaling, EngineConfig, ModelConfig, ServeConfig
from tokenmill.fleet.deploy import deployment_name, model_options

pytest.importorskip("ray")


def test_replicas_queue_bound_and_router() -> None:
    model = ModelConfig("team/llama 3", replicas=3, engine=EngineConfig(max_num_seqs=4))
    opts = model_options(model, ServeConfig(shutdown_timeout=7), "prefix")
    assert opts["name"] == deployment_name(model) == "model-team-llama-3"
    assert opts["num_replicas"] == 3 and "autoscaling_config" not in opts
    # Ray must not queue below our own bound (max_num_seqs + max_queue): ours answers 503s.
    assert opts["max_ongoing_requests"] == 4 + EngineConfig().max_queue
    assert opts["ray_actor_options"] == {"num_cpus": 0}
    assert opts["graceful_shutdown_timeout_s"] == 7
    cls = opts["request_router_config"].get_request_router_class()
    assert cls.__name__ == "PrefixAwareRouter"
    rr = model_options(model, ServeConfig(), "round-robin")["request_router_config"]
    assert rr.get_request_router_class().__name__ == "RoundRobinRouter"
    assert "request_router_config" not in model_options(model, ServeConfig(), "pow2")


def test_autoscaling_replaces_a_fixed_count() -> None:
    model = ModelConfig("m", replicas=2, autoscaling=Autoscaling(1, 6, 3.0))
    opts = model_options(model, ServeConfig(), "prefix")
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 6,
        "target_ongoing_requests": 3.0,
        "initial_replicas": 2,
    }


def test_a_ray_serve_config_file_builds_the_same_application(tmp_path: Path) -> None:
    from ray.serve import Application

    from tokenmill.fleet.deploy import app_builder

    catalogue = tmp_path / "models.toml"
    catalogue.write_text('[[models]]\nname = "m"\npath = "embedded"\nreplicas = 2\n')
    app = app_builder({"flags": f"--config {catalogue} --ingress-replicas 2 --ray-router pow2"})
    assert isinstance(app, Application)
