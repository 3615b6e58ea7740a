"""Helpers for the tenancy e2e tests: the ``tokenmill`` CLI on a test database."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import openai

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Say hi"}]


def cli(db: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tokenmill ARGS --db DB`` as an operator would."""
    r = subprocess.run(
        [sys.executable, "-m", "tokenmill", *args, "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def new_db(directory: Path, *projects: str) -> str:
    """A fresh SQLite database in ``directory`` holding ``projects``."""
    path = str(directory / "tokenmill.db")
    for project in projects:
        cli(path, "projects", "create", project)
    return path


def new_key(db: str, *flags: str) -> tuple[str, str]:
    """``tokenmill keys create FLAGS``: the printed secret and the key id."""
    r = cli(db, "keys", "create", *flags)
    secret = r.stdout.strip()
    m = re.search(r"created (key_[0-9a-f]+)", r.stderr)
    assert secret.startswith("tm-") and m, (r.stdout, r.stderr)
    return secret, m.group(1)


def client(base_url: str, key: str, project: str | None = None) -> openai.OpenAI:
    query = {"ai_project_id": project} if project else None
    return openai.OpenAI(
        base_url=base_url, api_key=key, max_retries=0, timeout=120, default_query=query
    )


def aclient(base_url: str, key: str, project: str | None = None) -> openai.AsyncOpenAI:
    query = {"ai_project_id": project} if project else None
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=key, max_retries=0, timeout=120, default_query=query
    )
