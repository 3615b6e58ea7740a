"""Keys and projects end to end: the CLI creates them, the official client uses them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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


def test_expired_key_is_refused(server: Server, db: str) -> None:
    secret, _ = new_key(db, "--project", "acme", "--expires", "3s")
    c = client(server.base_url, secret)
    ask(c)
    time.sleep(3.2)
    with pytest.raises(openai.AuthenticationError) as e:
        ask(c)
    assert "expired" in e.value.message


def test_projects_select_and_403(server: Server, db: str) -> None:
    secret, key_id = new_key(db, "--project", "acme", "--project", "labs")
    ask(client(server.base_url, secret))  # default project: the first
    ask(client(server.base_url, secret, project="labs"))
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(client(server.base_url, secret, project="default"))
    assert e.value.code == "project_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        client(server.base_url, secret, project="nope").models.list()
    rows = cli(db, "usage", "--requests", "--format", "csv").stdout.splitlines()
    mine = [line.split(",") for line in rows if key_id in line]
    assert sorted(r[2] for r in mine) == ["acme", "labs"]  # column 2: project


def test_tier_not_granted_is_403_and_granted_ones_are_echoed(server: Server, db: str) -> None:
    secret, _ = new_key(db, "--project", "acme")  # default grant: default,flex
    c = client(server.base_url, secret)
    assert ask(c, service_tier="flex").service_tier == "flex"
    assert ask(c, service_tier="auto").service_tier == "default"
    for tier in ("no-limit", "over-limit"):
        with pytest.raises(openai.PermissionDeniedError) as e:
            ask(c, service_tier=tier)
        assert e.value.code == "tier_not_allowed" and e.value.param == "service_tier"
    flex_only, _ = new_key(db, "--project", "acme", "--tiers", "flex")
    with pytest.raises(openai.PermissionDeniedError):
        ask(client(server.base_url, flex_only))  # auto needs default or over-limit
    assert ask(client(server.base_url, flex_only), service_tier="flex").service_tier == "flex"


def test_models_restriction(server: Server, db: str) -> None:
    other, _ = new_key(db, "--project", "acme", "--models", "some-other-model")
    with pytest.raises(openai.PermissionDeniedError) as e:
        ask(client(server.base_url, other))
    assert e.value.code == "model_not_allowed" and e.value.param == "model"
    mine, _ = new_key(db, "--project", "acme", "--models", MODEL)
    assert ask(client(server.base_url, mine)).usage is not None


def test_static_key_keeps_working_as_an_admin_key(server: Server, db: str) -> None:
    c = client(server.base_url, ADMIN)
    assert ask(c, service_tier="no-limit").service_tier == "no-limit"
    # An admin key acts for any project id a client sends, and is billed to it.
    r = ask(client(server.base_url, ADMIN, project="labs"), user="admin-for-labs")
    r2 = ask(client(server.base_url, ADMIN, project="proj-1"), user="admin-for-proj-1")
    rows = cli(db, "usage", "--requests", "--format", "csv").stdout.splitlines()
    by_id = {line.split(",")[0]: line.split(",") for line in rows}
    assert by_id[r.id][2] == "labs" and by_id[r2.id][2] == "proj-1"
    assert by_id[r.id][3].startswith("static-")  # the key column: a fingerprint, not the key


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("GET", "/v1/usage"), ("POST", "/v1/completions"),
     ("GET", "/metrics")],
)  # fmt: skip
def test_every_route_but_health_needs_a_key(server: Server, method: str, path: str) -> None:
    r = httpx.request(method, server.root + path, json={}, timeout=30)
    assert r.status_code == 401, (path, r.status_code)
    assert httpx.get(server.root + "/health").status_code == 200


def test_schema_and_docs_need_no_key(server: Server) -> None:
    """As vLLM does: they describe the API and hold no data (no keys, models or usage)."""
    r = httpx.get(server.root + "/openapi.json", timeout=30)
    assert r.status_code == 200
    assert ADMIN not in r.text and "smollm2" not in r.text
    assert "/v1/chat/completions" in r.json()["paths"]
    assert httpx.get(server.root + "/docs", timeout=30).status_code == 200


def test_key_material_never_logged(server: Server, db: str) -> None:
    secret, key_id = new_key(db, "--project", "acme")
    ask(client(server.base_url, secret))
    httpx.get(server.base_url + "/models", headers={"Authorization": "Bearer tm-wrong-secret"})
    time.sleep(0.3)
    log = "".join(server.output)
    assert key_id in log  # requests are logged, by key id
    for material in (secret, secret[3:20], ADMIN, "tm-wrong-secret"):
        assert material not in log


def test_header_size_limit_and_cors_off(server: Server) -> None:
    r = httpx.get(
        server.base_url + "/models",
        headers={"Authorization": f"Bearer {ADMIN}", "X-Big": "x" * 20_000},
    )
    assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_fields_too_large"
    pre = httpx.options(
        server.base_url + "/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    r = httpx.get(
        server.base_url + "/models",
        headers={"Authorization": f"Bearer {ADMIN}", "Origin": "https://evil.example"},
    )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_open_server_closes_when_the_first_key_is_created(tmp_path: Path) -> None:
    db = str(tmp_path / "open.db")
    s = start_server(
        "--db", db, "--threads", "1", "--max-num-seqs", "2",
        "--cors-origin", "https://app.example",
        env={"TOKENMILL_API_KEYS": ""},
    )  # fmt: skip
    try:
        anyone = client(s.base_url, "anything")
        assert ask(anyone).usage is not None
        pre = httpx.options(
            s.base_url + "/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.headers.get("access-control-allow-origin") == "https://app.example"
        secret, key_id = new_key(db, "--project", "default")
        with pytest.raises(openai.AuthenticationError):
            ask(anyone)
        assert ask(client(s.base_url, secret)).usage is not None
        cli(db, "keys", "revoke", key_id)
        with pytest.raises(openai.AuthenticationError):  # revoking all keys does not reopen
            ask(anyone)
    finally:
        stop_server(s)
