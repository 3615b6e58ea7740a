"""The model catalogue: ``tokenmill serve --config FILE`` reads one TOML table per model.

```toml
[[models]]
name = "smollm2-135m-instruct"          # the id clients send
path = "embedded"                        # or a GGUF file (relative to the catalogue file)
aliases = ["meta-llama/Meta-Llama-3.1-70B-Instruct"]
replicas = 2
threads = 1
ctx_size = 4096
max_num_seqs = 8
rpm = 60                                 # defaults for keys without their own limits
tpm = 400000
price_prompt = 0.13                      # USD per million tokens, for the ledger's cost
price_completion = 0.40
```

Everything is checked before anything starts: an unknown key, a value of the wrong type or
range, a missing file or a name two models claim is a ``CatalogueError`` naming the model and
the key. Values given as command-line flags override every model's (``overrides``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tokenmill.config import Autoscaling, EngineConfig, ModelConfig, embedded_model_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EMBEDDED = "embedded"


class CatalogueError(ValueError):
    """The catalogue cannot be served as written; the message says where and why. ``key``
    and ``problem`` are the same without the model, for callers that word it their way."""

    def __init__(self, message: str, key: str | None = None, problem: str = "") -> None:
        super().__init__(message)
        self.key, self.problem = key, problem or message


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


# key -> (check, what a valid value is)
_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "path": (lambda v: isinstance(v, str) and v != "", "'embedded' or the path of a GGUF file"),
    "aliases": (
        lambda v: isinstance(v, list) and all(isinstance(a, str) and a for a in v),
        "a list of non-empty strings",
    ),
    "replicas": (_integer(1), "an integer of at least 1"),
    "min_replicas": (_integer(0), "an integer of at least 0"),
    "max_replicas": (_integer(1), "an integer of at least 1"),
    "target_ongoing_requests": (
        lambda v: _number(v) and v > 0,
        "a positive number",
    ),
    "threads": (_integer(0), "an integer of at least 0 (0: all cores)"),
    "ctx_size": (_integer(16), "an integer of at least 16"),
    "max_num_seqs": (_integer(1), "an integer of at least 1"),
    "max_batch_tokens": (_integer(1), "an integer of at least 1"),
    "max_queue": (_integer(0), "an integer of at least 0"),
    "cache_ram": (_integer(0), "an integer of at least 0 (MiB)"),
    "prefix_cache": (lambda v: isinstance(v, bool), "true or false"),
    "spec_tokens": (_integer(0), "an integer of at least 0"),
    "spec_max_seqs": (_integer(1), "an integer of at least 1"),
    "rpm": (_integer(0), "an integer of at least 0"),
    "tpm": (_integer(0), "an integer of at least 0"),
    "price_prompt": (_number, "a number of at least 0 (USD per million tokens)"),
    "price_cached_prompt": (_number, "a number of at least 0 (USD per million tokens)"),
    "price_completion": (_number, "a number of at least 0 (USD per million tokens)"),
}
# Catalogue keys that set EngineConfig fields, and which field (cache_ram is host_cache_mib).
_ENGINE_KEYS = {
    "max_num_seqs": "max_num_seqs",
    "max_batch_tokens": "max_batch_tokens",
    "max_queue": "max_queue",
    "cache_ram": "host_cache_mib",
    "prefix_cache": "prefix_cache",
    "spec_tokens": "spec_tokens",
    "spec_max_seqs": "spec_max_seqs",
}


def load_catalogue(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    defaults: ModelConfig | None = None,
) -> tuple[ModelConfig, ...]:
    """Read and check ``path``; ``overrides`` (catalogue keys) replace every model's values,
    ``defaults`` gives what a model leaves out."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except OSError as e:
        raise CatalogueError(f"{file}: cannot read the catalogue ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogueError(f"{file}: not valid TOML: {e}") from None
    extra = sorted(set(raw) - {"models"})
    if extra:
        raise CatalogueError(f"{file}: unknown top-level key {extra[0]!r} (expected [[models]])")
    tables = raw.get("models")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise CatalogueError(f"{file}: no models: add at least one [[models]] table")
    models = tuple(
        model_from_table(table, file.parent, overrides, defaults, index=i)
        for i, table in enumerate(tables)
    )
    _check_names(models)
    return models


def model_from_table(
    table: Mapping[str, Any],
    base: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: ModelConfig | None = None,
    index: int = 0,
) -> ModelConfig:
    """One model from its catalogue keys (the command line's single model goes through here
    too); relative paths are taken from ``base`` (default: the working directory)."""
    defaults = defaults or ModelConfig()
    name = table.get("name")
    where = f"model {name!r}" if isinstance(name, str) and name else f"models[{index}]"
    values = {**table, **(overrides or {})}
    for key, value in values.items():
        if key not in _KEYS:
            raise CatalogueError(f"{where}: unknown key {key!r}", key, "is not a known key")
        check, expected = _KEYS[key]
        if not check(value):
            problem = f"must be {expected}, not {value!r}"
            raise CatalogueError(f"{where}: {key!r} {problem}", key, problem)
    if "name" not in values:
        raise CatalogueError(f"{where}: missing key 'name'", "name", "is missing")
    engine_values = {
        **dataclasses.asdict(defaults.engine),
        **{_ENGINE_KEYS[k]: v for k, v in values.items() if k in _ENGINE_KEYS},
    }
    batch, seqs = engine_values["max_batch_tokens"], engine_values["max_num_seqs"]
    if batch < seqs:
        problem = (
            f"({batch}) must be at least max_num_seqs ({seqs}): each step decodes one token "
            "of every running sequence"
        )
        raise CatalogueError(f"{where}: 'max_batch_tokens' {problem}", "max_batch_tokens", problem)
    engine = EngineConfig(**engine_values)
    return ModelConfig(
        model_id=values["name"].strip(),
        path=_model_path(where, values.get("path", EMBEDDED), base or Path.cwd()),
        aliases=tuple(values.get("aliases", ())),
        threads=values.get("threads", defaults.threads),
        ctx_size=values.get("ctx_size", defaults.ctx_size),
        engine=engine,
        replicas=values.get("replicas", 1),
        autoscaling=_autoscaling(where, values),
        rpm=values.get("rpm"),
        tpm=values.get("tpm"),
        price_prompt=_float(values.get("price_prompt")),
        price_cached_prompt=_float(values.get("price_cached_prompt")),
        price_completion=_float(values.get("price_completion")),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _model_path(where: str, value: str, base: Path) -> str:
    if value == EMBEDDED:
        try:
            return str(embedded_model_path())
        except FileNotFoundError as e:
            raise CatalogueError(f"{where}: 'path' is 'embedded', but {e}", "path") from None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise CatalogueError(f"{where}: 'path': no such file: {path}", "path")
    return str(path)


def _autoscaling(where: str, values: Mapping[str, Any]) -> Autoscaling | None:
    if not any(k in values for k in ("min_replicas", "max_replicas", "target_ongoing_requests")):
        return None
    replicas = values.get("replicas", 1)
    low = values.get("min_replicas", min(1, replicas))
    high = values.get("max_replicas", max(replicas, low, 1))
    if low > high:
        raise CatalogueError(
            f"{where}: 'min_replicas' ({low}) must not exceed 'max_replicas' ({high})",
            "min_replicas",
        )
    return Autoscaling(low, high, float(values.get("target_ongoing_requests", 2.0)))


def _check_names(models: tuple[ModelConfig, ...]) -> None:
    owner: dict[str, str] = {}
    for m in models:
        for n in m.names:
            if n in owner and owner[n] != m.model_id:
                raise CatalogueError(
                    f"model {m.model_id!r}: the name {n!r} is already taken by model {owner[n]!r}",
                    "aliases",
                )
            if n in owner:
                raise CatalogueError(f"model {m.model_id!r}: listed twice", "name")
            owner[n] = m.model_id
