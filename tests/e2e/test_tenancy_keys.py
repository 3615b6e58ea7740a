"""Keys end to end: the CLI, a separate process, creates and revokes them while the server
runs; the official client uses them. Projects, tiers, model grants, the routes' keys and CORS
are tested in-process (tests/unit/test_tenancy_http.py)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.tenancy_helpers import MESSAGES, MODEL, cli, client, new_db, new_key

ADMIN = "tm-static-admin-key"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_db(tmp_path_factory.mktemp("keys"), "acme", "labs")


@pytest.fixture(scope="module")
def server(db: str) -> Iterator[Server]:
    s = start_server("--api-key", ADMIN, "--db", db, "--max-num-seqs", "4", "--threads", "1")
    yield s
    stop_server(s)


def ask(c: openai.OpenAI, **kw: object) -> openai.types.chat.ChatCompletion:
    return c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=2,
        temperature=0,
        **kw,  # type: ignore[arg-type]
    )


def test_create_use_and_revoke(server: Server, db: str) -> None:
    secret, key_id = new_key(db, "--project", "acme", "--name", "ci")
    c = client(server.base_url, secret)
    r = ask(c)
    assert r.service_tier == "default" and r.usage is not None
    listed = cli(db, "keys", "list").stdout
    assert key_id in listed and "acme" in listed and "active" in listed
    assert secret not in listed and secret[8:] not in listed  # never the secret
    assert cli(db, "keys", "revoke", key_id).returncode == 0
    with pytest.raises(openai.AuthenticationError) as e:
        ask(c)
    assert "revoked" in e.value.message
    assert "revoked" in cli(db, "keys", "list").stdout
    assert cli(db, "keys", "revoke", key_id, check=False).returncode != 0
    with pytest.raises(openai.AuthenticationError):
        client(server.base_url, secret).models.list()
