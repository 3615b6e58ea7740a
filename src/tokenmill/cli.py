"""``tokenmill`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

from tokenmill.catalogue import CatalogueError, load_catalogue, model_from_table
from tokenmill.config import (
    EMBEDDED_MODEL_ID,
    EngineConfig,
    FlashAttn,
    LogFormat,
    ModelConfig,
    ServeConfig,
    embedded_model_path,
    env_api_keys,
    env_data_dir,
    env_db,
    env_prices,
    env_redis,
)
from tokenmill.fleet.deploy import ROUTERS
from tokenmill.tenancy import admin

# Flag defaults are the dataclasses' own: one place for every default.
_SERVE = ServeConfig()
_MODEL = ModelConfig()
_ENGINE = EngineConfig()
# Flags that set a model's value: each flag's dest is its catalogue key (catalogue.py).
_MODEL_FLAGS = (
    "threads", "ctx_size", "max_num_seqs", "max_batch_tokens", "prefix_cache", "cache_ram",
    "spec_tokens", "spec_max_seqs", "max_queue",
)  # fmt: skip


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    p.add_argument("--host", default=_SERVE.host)
    p.add_argument("--port", type=int, default=_SERVE.port)
    p.add_argument("--model", help="path to a GGUF file (default: the embedded SmolLM2-135M)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML catalogue of models to serve (docs/scale-out.md); flags given with it "
        "override every model's value",
    )
    p.add_argument("--served-model-name", help="the model id clients use")
    p.add_argument(
        "--model-alias", action="append", default=[], help="another name for the model (repeatable)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted API key (repeatable; also TOKENMILL_API_KEYS)",
    )
    p.add_argument("--threads", type=int, help="(default: all cores)")
    p.add_argument(
        "--ctx-size", type=int, help=f"context per sequence (default: {_MODEL.ctx_size})"
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="batch-invariant kernels (no tinyBLAS, no flash attention): every output is "
        "bit-identical however requests are batched, speculative decoding exactly greedy; "
        "slower. Default: llama.cpp's fastest kernels, whose rounding depends on batching",
    )
    p.add_argument(
        "--flash-attn",
        nargs="?",
        const="on",
        default=_SERVE.flash_attn,
        choices=get_args(FlashAttn),
        help="llama.cpp's flash attention (default auto: llama.cpp decides; off with "
        "--deterministic)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="serve on Ray Serve: connect to the Ray cluster at ADDRESS (e.g. auto or "
        "ray://head:10001), or start a local one; each model's `replicas` run as engine "
        "replicas behind an ingress (docs/scale-out.md)",
    )
    p.add_argument(
        "--ingress-replicas",
        type=int,
        default=1,
        help="with --ray: replicas of the HTTP ingress (rate limits shared through --redis)",
    )
    p.add_argument(
        "--ray-router",
        choices=ROUTERS,
        default="prefix",
        help="with --ray: how requests pick a model replica (default prefix: the replica "
        "holding the longest prefix of the prompt, unless it is much busier)",
    )
    _engine_flags(p)
    _http_flags(p)
    p.add_argument("--log-level", default=_SERVE.log_level)
    p.add_argument(
        "--log-format",
        choices=get_args(LogFormat),
        default=_SERVE.log_format,
        help="text (default) or json: one JSON object per line, one line per request with its "
        "id (x-request-id), status, duration, model, project, key id and usage",
    )
    p.add_argument(
        "--log-content",
        action="store_true",
        help="put each request's prompt and generated text in its log line (off by default: "
        "they are the users' data)",
    )
    admin.add_db_argument(p)
    p.add_argument(
        "--data-dir",
        help="where uploaded files and batch results are kept (also TOKENMILL_DATA_DIR; "
        "default: beside the SQLite database, or the user data dir)",
    )
    p.add_argument("--prices", help="JSON file of per-model prices (also TOKENMILL_PRICES)")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="keep rate-limit windows in Redis, shared by every server using it (also "
        "TOKENMILL_REDIS); default: this process's memory",
    )
    # For tests: admin keys may POST /internal/faults to make the next decodes fail.
    p.add_argument("--fault-injection", action="store_true", help=argparse.SUPPRESS)


def _engine_flags(p: argparse.ArgumentParser) -> None:
    # Defaults are None (the dataclasses give the real ones) so that a catalogue can tell the
    # flags given, which override every model's value, from those left out.
    e = _ENGINE
    p.add_argument("--max-num-seqs", type=int, help=f"decoded together (default: {e.max_num_seqs})")
    p.add_argument("--max-batch-tokens", type=int, help=f"per step (default: {e.max_batch_tokens})")
    p.add_argument(
        "--no-prefix-cache", action="store_const", const=False, dest="prefix_cache",
        help="recompute every prompt",
    )  # fmt: skip
    p.add_argument(
        "--cache-ram",
        type=int,
        metavar="MIB",
        help=f"host memory for prompt KV saved from reused slots (0: off; default: "
        f"{e.host_cache_mib})",
    )
    p.add_argument(
        "--spec-tokens",
        type=int,
        help="speculative decoding by prompt lookup: draft up to N tokens per step (0: off)",
    )
    p.add_argument(
        "--spec-max-seqs",
        type=int,
        help=f"speculate only while at most this many sequences are decoding (default: "
        f"{e.spec_max_seqs})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        help=f"sequences that may wait; beyond: 503 (default: {e.max_queue})",
    )


def _http_flags(p: argparse.ArgumentParser) -> None:
    s = _SERVE
    p.add_argument("--max-body-bytes", type=int, default=s.max_body_bytes)
    p.add_argument("--max-header-bytes", type=int, default=s.max_header_bytes)
    p.add_argument(
        "--max-file-bytes", type=int, default=s.max_file_bytes, help="largest upload to /v1/files"
    )
    p.add_argument(
        "--flex-timeout", type=float, default=s.flex_timeout, help="seconds flex may wait"
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], help="allow browsers from this origin"
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve /metrics without an API key (for a Prometheus scraper on a trusted network)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=s.shutdown_timeout,
        help="seconds running requests may finish after SIGTERM before they are ended",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=s.stall_timeout,
        help="an engine step running longer than this fails /health (liveness)",
    )


def _check_ranges(args: argparse.Namespace) -> None:
    for name, value, low in (
        ("--max-body-bytes", args.max_body_bytes, 1024),
        ("--max-header-bytes", args.max_header_bytes, 1024),
    ):
        if value < low:
            raise SystemExit(f"tokenmill: {name} must be at least {low}")
    for name, seconds in (
        ("--flex-timeout", args.flex_timeout),
        ("--stall-timeout", args.stall_timeout),
    ):
        if seconds <= 0:
            raise SystemExit(f"tokenmill: {name} must be positive")
    if args.shutdown_timeout < 0:
        raise SystemExit("tokenmill: --shutdown-timeout must not be negative")


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags given on the command line, under their catalogue keys."""
    return {key: getattr(args, key) for key in _MODEL_FLAGS if getattr(args, key) is not None}


def _models(args: argparse.Namespace) -> tuple[ModelConfig, ...]:
    """The catalogue (``--config``) or the one model the flags describe, checked."""
    overrides = _model_overrides(args)
    if args.config:
        if args.model or args.served_model_name or args.model_alias:
            raise SystemExit(
                "tokenmill: --model, --served-model-name and --model-alias describe one model; "
                "with --config, models are described in the catalogue"
            )
        try:
            return load_catalogue(args.config, overrides)
        except CatalogueError as e:
            raise SystemExit(f"tokenmill: {e}") from None
    if args.model:
        path = Path(args.model)
        if not path.is_file():
            raise SystemExit(f"tokenmill: model file not found: {path}")
        name = args.served_model_name or path.stem
    else:
        path = embedded_model_path()
        name = args.served_model_name or EMBEDDED_MODEL_ID
    table = {"name": name, "path": str(path), "aliases": list(args.model_alias)}
    try:
        return (model_from_table(table, overrides=overrides),)
    except CatalogueError as e:  # worded with the flag's name, not the catalogue's key
        flag = (e.key or "").replace("_", "-")
        raise SystemExit(f"tokenmill: --{flag} {e.problem}") from None


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.deterministic and args.flash_attn == "on":
        raise SystemExit(
            "tokenmill: --flash-attn on and --deterministic contradict: flash attention's "
            "rounding depends on batching"
        )
    _check_ranges(args)
    return ServeConfig(
        host=args.host,
        port=args.port,
        models=_models(args),
        api_keys=tuple(args.api_key) + env_api_keys(),
        max_body_bytes=args.max_body_bytes,
        kernels="deterministic" if args.deterministic else "fast",
        flash_attn="off" if args.deterministic else args.flash_attn,
        log_level=args.log_level,
        log_format=args.log_format,
        log_content=args.log_content,
        metrics_public=args.metrics_public,
        db=args.db or env_db(),
        data_dir=args.data_dir or env_data_dir(),
        max_file_bytes=args.max_file_bytes,
        prices=args.prices or env_prices(),
        redis=args.redis or env_redis(),
        flex_timeout=args.flex_timeout,
        max_header_bytes=args.max_header_bytes,
        cors_origins=tuple(args.cors_origin),
        shutdown_timeout=args.shutdown_timeout,
        stall_timeout=args.stall_timeout,
        fault_injection=args.fault_injection,
    )


def parse_serve(argv: list[str]) -> argparse.Namespace:
    """``tokenmill serve`` flags alone (a Ray Serve config file carries them as a string)."""
    parser = argparse.ArgumentParser(prog="tokenmill")
    _serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from tokenmill.bench.main import add_parser as add_bench_parser

    add_bench_parser(sub)
    admin.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        config = config_from_args(args)
        if args.ray is not None:
            if args.ingress_replicas < 1:
                raise SystemExit("tokenmill: --ingress-replicas must be at least 1")
            from tokenmill.fleet.deploy import run as run_on_ray

            return run_on_ray(config, args.ray or None, args.ingress_replicas, args.ray_router)
        from tokenmill.server import serve

        return serve(config)
    if args.command == "bench":
        from tokenmill.bench.main import run as run_bench

        return run_bench(args)
    if args.command in admin.COMMANDS:
        return admin.run(args, args.db or env_db())
    parser.print_help(sys.stderr)
    return 2
