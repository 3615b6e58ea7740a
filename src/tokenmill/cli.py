"""``tokenmill`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from tokenmill.config import (
    EMBEDDED_MODEL_ID,
    EngineConfig,
    FlashAttn,
    ServeConfig,
    embedded_model_path,
    env_api_keys,
    env_db,
    env_prices,
)
from tokenmill.tenancy import admin

# Flag defaults are the dataclasses' own: one place for every default.
_SERVE = ServeConfig()
_ENGINE = EngineConfig()


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    p.add_argument("--host", default=_SERVE.host)
    p.add_argument("--port", type=int, default=_SERVE.port)
    p.add_argument("--model", help="path to a GGUF file (default: the embedded SmolLM2-135M)")
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
    p.add_argument("--threads", type=int, default=_SERVE.threads, help="(default: all cores)")
    p.add_argument("--ctx-size", type=int, default=_SERVE.ctx_size, help="context per sequence")
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
    _engine_flags(p)
    _http_flags(p)
    p.add_argument("--log-level", default=_SERVE.log_level)
    admin.add_db_argument(p)
    p.add_argument("--prices", help="JSON file of per-model prices (also TOKENMILL_PRICES)")
    # For tests: admin keys may POST /internal/faults to make the next decodes fail.
    p.add_argument("--fault-injection", action="store_true", help=argparse.SUPPRESS)


def _engine_flags(p: argparse.ArgumentParser) -> None:
    e = _ENGINE
    p.add_argument("--max-num-seqs", type=int, default=e.max_num_seqs, help="decoded together")
    p.add_argument("--max-batch-tokens", type=int, default=e.max_batch_tokens, help="per step")
    p.add_argument("--no-prefix-cache", action="store_true", help="recompute every prompt")
    p.add_argument(
        "--cache-ram",
        type=int,
        default=e.host_cache_mib,
        metavar="MIB",
        help="host memory for prompt KV saved from reused slots (0: off)",
    )
    p.add_argument(
        "--spec-tokens",
        type=int,
        default=e.spec_tokens,
        help="speculative decoding by prompt lookup: draft up to N tokens per step (0: off)",
    )
    p.add_argument(
        "--spec-max-seqs",
        type=int,
        default=e.spec_max_seqs,
        help="speculate only while at most this many sequences are decoding",
    )
    p.add_argument(
        "--max-queue", type=int, default=e.max_queue, help="sequences that may wait; beyond: 503"
    )


def _http_flags(p: argparse.ArgumentParser) -> None:
    s = _SERVE
    p.add_argument("--max-body-bytes", type=int, default=s.max_body_bytes)
    p.add_argument("--max-header-bytes", type=int, default=s.max_header_bytes)
    p.add_argument(
        "--flex-timeout", type=float, default=s.flex_timeout, help="seconds flex may wait"
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], help="allow browsers from this origin"
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
        ("--ctx-size", args.ctx_size, 16),
        ("--max-num-seqs", args.max_num_seqs, 1),
        ("--max-batch-tokens", args.max_batch_tokens, args.max_num_seqs),
        ("--max-body-bytes", args.max_body_bytes, 1024),
        ("--spec-tokens", args.spec_tokens, 0),
        ("--spec-max-seqs", args.spec_max_seqs, 1),
        ("--max-header-bytes", args.max_header_bytes, 1024),
        ("--max-queue", args.max_queue, 0),
        ("--cache-ram", args.cache_ram, 0),
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


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.deterministic and args.flash_attn == "on":
        raise SystemExit(
            "tokenmill: --flash-attn on and --deterministic contradict: flash attention's "
            "rounding depends on batching"
        )
    if args.model:
        path = Path(args.model)
        if not path.is_file():
            raise SystemExit(f"tokenmill: model file not found: {path}")
        model_id = args.served_model_name or path.stem
    else:
        path = embedded_model_path()
        model_id = args.served_model_name or EMBEDDED_MODEL_ID
    _check_ranges(args)
    engine = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_batch_tokens=args.max_batch_tokens,
        prefix_cache=not args.no_prefix_cache,
        host_cache_mib=args.cache_ram,
        spec_tokens=args.spec_tokens,
        spec_max_seqs=args.spec_max_seqs,
        max_queue=args.max_queue,
    )
    return ServeConfig(
        host=args.host,
        port=args.port,
        model_path=str(path),
        model_id=model_id,
        aliases=tuple(args.model_alias),
        api_keys=tuple(args.api_key) + env_api_keys(),
        threads=args.threads,
        ctx_size=args.ctx_size,
        engine=engine,
        max_body_bytes=args.max_body_bytes,
        kernels="deterministic" if args.deterministic else "fast",
        flash_attn="off" if args.deterministic else args.flash_attn,
        log_level=args.log_level,
        db=args.db or env_db(),
        prices=args.prices or env_prices(),
        flex_timeout=args.flex_timeout,
        max_header_bytes=args.max_header_bytes,
        cors_origins=tuple(args.cors_origin),
        shutdown_timeout=args.shutdown_timeout,
        stall_timeout=args.stall_timeout,
        fault_injection=args.fault_injection,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from tokenmill.bench.main import add_parser as add_bench_parser

    add_bench_parser(sub)
    admin.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from tokenmill.server import serve

        return serve(config_from_args(args))
    if args.command == "bench":
        from tokenmill.bench.main import run as run_bench

        return run_bench(args)
    if args.command in admin.COMMANDS:
        return admin.run(args, args.db or env_db())
    parser.print_help(sys.stderr)
    return 2
