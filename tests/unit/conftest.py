"""Fixtures for the in-process tests: one AppStack (tests/harness.py) per module that asks for
``stack`` or ``client``; a module defining its own ``stack`` fixture overrides this one."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.harness import AppStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppStack]:
    """Four slots: room for n > 1 and a few concurrent requests."""
    s = AppStack(tmp_path_factory.mktemp("stack"), max_num_seqs=4)
    s.open()
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack: AppStack) -> openai.OpenAI:
    """The official client, on the module's stack, with the admin key."""
    return stack.official()
