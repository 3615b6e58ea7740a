"""The model catalogue (``--config``): parsing, defaults, flag overrides and its errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tokenmill.catalogue import CatalogueError, load_catalogue
from tokenmill.cli import _serve_parser, config_from_args, main
from tokenmill.config import EngineConfig, ServeConfig, embedded_model_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


TWO = """
[[models]]
name = "smollm2-135m-instruct"
path = "embedded"
aliases = ["meta-llama/Meta-Llama-3.1-70B-Instruct"]
replicas = 2
threads = 1
ctx_size = 2048
max_num_seqs = 4
rpm = 60
tpm = 400000
price_prompt = 0.13
price_completion = 0.40

[[models]]
name = "second"
path = "weights/second.gguf"
max_batch_tokens = 256
cache_ram = 0
min_replicas = 1
max_replicas = 3
target_ongoing_requests = 4
"""


@pytest.fixture
def two(tmp_path: Path) -> Path:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "second.gguf").write_bytes(b"GGUF")
    return write(tmp_path, TWO)


def test_every_key_lands_where_it_belongs(two: Path) -> None:
    first, second = load_catalogue(two)
    assert first.model_id == "smollm2-135m-instruct"
    assert first.path == str(embedded_model_path())
    assert first.names == ("smollm2-135m-instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct")
    assert (first.replicas, first.threads, first.ctx_size) == (2, 1, 2048)
    assert first.engine.max_num_seqs == 4 and first.autoscaling is None
    assert (first.rpm, first.tpm) == (60, 400000)
    assert (first.price_prompt, first.price_completion) == (0.13, 0.40)
    # Left out: the defaults; a relative path is the catalogue file's directory's.
    assert second.path == str(two.parent / "weights" / "second.gguf")
    assert second.aliases == () and second.replicas == 1 and second.rpm is None
    assert second.ctx_size == 4096 and second.threads == 0
    assert second.engine.max_batch_tokens == 256 and second.engine.host_cache_mib == 0
    assert second.engine.max_num_seqs == EngineConfig().max_num_seqs
    assert second.autoscaling is not None
    assert (second.autoscaling.min_replicas, second.autoscaling.max_replicas) == (1, 3)
    assert second.autoscaling.target_ongoing_requests == 4.0


def test_overrides_replace_every_models_value(two: Path) -> None:
    models = load_catalogue(two, {"threads": 2, "max_num_seqs": 2})
    assert [m.threads for m in models] == [2, 2]
    assert [m.engine.max_num_seqs for m in models] == [2, 2]
    assert models[0].ctx_size == 2048  # not overridden: the catalogue's


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[models]]\nname = "a"\nthreds = 1\n', "model 'a': unknown key 'threds'"),
        ('[[models]]\nname = "a"\nthreads = "2"\n', "model 'a': 'threads' must be an integer"),
        ('[[models]]\nname = "a"\nthreads = true\n', "'threads' must be an integer"),
        ('[[models]]\nname = "a"\nctx_size = 8\n', "'ctx_size' must be an integer of at least 16"),
        ('[[models]]\nname = "a"\nreplicas = 0\n', "'replicas' must be an integer of at least 1"),
        ('[[models]]\nname = "a"\naliases = "b"\n', "'aliases' must be a list of non-empty"),
        ('[[models]]\nname = "a"\nprice_prompt = -1\n', "'price_prompt' must be a number"),
        ('[[models]]\nname = "a"\npath = "nope.gguf"\n', "model 'a': 'path': no such file"),
        ('[[models]]\npath = "embedded"\n', "models[0]: missing key 'name'"),
        ('[[models]]\nname = ""\n', "models[0]: 'name' must be a non-empty string"),
        (
            '[[models]]\nname = "a"\nmax_num_seqs = 8\nmax_batch_tokens = 4\n',
            "model 'a': 'max_batch_tokens' (4) must be at least max_num_seqs (8)",
        ),
        (
            '[[models]]\nname = "a"\nmin_replicas = 3\nmax_replicas = 2\n',
            "model 'a': 'min_replicas' (3) must not exceed 'max_replicas' (2)",
        ),
        (
            '[[models]]\nname = "a"\n[[models]]\nname = "b"\naliases = ["a"]\n',
            "model 'b': the name 'a' is already taken by model 'a'",
        ),
        ('[[models]]\nname = "a"\n[[models]]\nname = "a"\n', "model 'a': listed twice"),
        ('[[model]]\nname = "a"\n', "unknown top-level key 'model'"),
        ("models = []\n", "no models"),
        ('[[models]\nname = "a"\n', "not valid TOML"),
    ],
)
def test_errors_name_the_model_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(CatalogueError) as e:
        load_catalogue(write(tmp_path, text))
    assert says in str(e.value)


def test_a_missing_catalogue_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read the catalogue"):
        load_catalogue(tmp_path / "absent.toml")


def parse(*argv: str) -> ServeConfig:
    parser = argparse.ArgumentParser()
    _serve_parser(parser.add_subparsers(dest="command"))
    return config_from_args(parser.parse_args(["serve", *argv]))


def test_flags_with_config_override_every_model(two: Path) -> None:
    config = parse("--config", str(two), "--ctx-size", "1024", "--no-prefix-cache")
    assert [m.model_id for m in config.models] == ["smollm2-135m-instruct", "second"]
    assert [m.ctx_size for m in config.models] == [1024, 1024]
    assert not any(m.engine.prefix_cache for m in config.models)
    assert [m.threads for m in config.models] == [1, 0]


def test_without_config_the_flags_describe_one_model() -> None:
    config = parse("--ctx-size", "1024", "--max-num-seqs", "2", "--model-alias", "gpt-4o")
    (model,) = config.models
    assert model.model_id == "smollm2-135m-instruct" and model.aliases == ("gpt-4o",)
    assert model.ctx_size == 1024 and model.engine.max_num_seqs == 2
    assert model.engine == EngineConfig(max_num_seqs=2)  # every other value: the default


def test_bad_catalogue_stops_serve_before_anything_starts(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\nname = "a"\nthreads = -1\n')
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", str(path)])
    assert "model 'a': 'threads' must be an integer of at least 0" in str(e.value.code)


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(SystemExit, match="--ctx-size must be an integer of at least 16"):
        parse("--ctx-size", "8")
    with pytest.raises(SystemExit, match=r"--max-batch-tokens .*must be at least max_num_seqs"):
        parse("--max-num-seqs", "8", "--max-batch-tokens", "4")
    with pytest.raises(SystemExit, match="describe one model"):
        parse("--config", "x.toml", "--model-alias", "b")
