"""The kernel flags reach the config and llama.cpp: the fast kernels with flash attention as
llama.cpp decides by default, ``--deterministic`` with it off, and flash attention on or off
really changes the attention kernel."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from tokenmill.cli import _serve_parser, config_from_args
from tokenmill.config import FlashAttn, embedded_model_path
from tokenmill.runner.base import Batch
from tokenmill.runner.llama_cpp import LlamaRunner


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_flags_set_the_config() -> None:
    default = config_from_args(parse())
    assert (default.kernels, default.flash_attn) == ("fast", "auto")
    exact = config_from_args(parse("--deterministic"))
    assert (exact.kernels, exact.flash_attn) == ("deterministic", "off")
    assert config_from_args(parse("--flash-attn")).flash_attn == "on"
    assert config_from_args(parse("--flash-attn", "off")).flash_attn == "off"
    with pytest.raises(SystemExit, match="contradict"):
        config_from_args(parse("--deterministic", "--flash-attn", "on"))


def prompt_logits(flash_attn: FlashAttn) -> np.ndarray:
    runner = LlamaRunner(str(embedded_model_path()), 256, 2, 1, 64, flash_attn=flash_attn)
    try:
        text = "The quick brown fox jumps over the lazy dog. " * 4 + "Once upon a time, there was"
        tokens = np.array(runner.tokenize(text, False, False), dtype=np.int32)
        n = tokens.shape[0]
        batch = Batch(tokens, np.arange(n, dtype=np.int32), np.zeros(n, np.int32), np.ones(n, bool))
        return runner.decode(batch)
    finally:
        runner.close()


def test_flash_attention_is_really_used() -> None:
    plain, flash = prompt_logits("off"), prompt_logits("on")
    assert np.array_equal(plain, prompt_logits("off"))  # the same batch: the same logits
    assert not np.array_equal(plain, flash)  # another kernel's rounding...
    # ...of the same model: rounding amplified through 30 layers, but the same distributions.
    corr = [np.corrcoef(p, f)[0, 1] for p, f in zip(plain, flash, strict=True)]
    assert min(corr) > 0.99, min(corr)
