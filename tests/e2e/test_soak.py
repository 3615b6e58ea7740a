"""``tokenmill bench --soak``, briefly: it starts its own server, runs every kind of request,
and its checks all pass (the 30-minute run is documented in docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tokenmill.bench.soak import figures, report
from tokenmill.bench.soak.mix import COMPLETED, REFUSED, UNEXPECTED, Outcome
from tokenmill.bench.soak.probe import Sample
from tokenmill.bench.soak.run import SoakRun
from tokenmill.bench.soak.server import Key, Keys, Served


@pytest.mark.slow  # about 30 s: the server starts, 20 s of load, the drain
def test_short_soak_passes_every_check(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tokenmill", "bench", "--soak", "--duration", "20",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    data = json.loads((tmp_path / "soak.json").read_text())
    failed = [c for c in data["checks"] if not c["ok"]]
    assert data["verdict"] == "PASS" and not failed, failed

    by_kind = data["requests"]["by_kind"]
    assert all(k["sent"] > 0 for k in by_kind.values()), by_kind
    assert by_kind["cancel"]["results"].get("cancelled", 0) > 0
    assert set(data["requests"]["bad_variants"]) == {
        "invalid-param", "wrong-type", "missing-field", "unknown-model", "bad-key",
        "malformed-json",
    }  # fmt: skip
    assert data["requests"]["limited"]["refused_429"] > 0
    ledger = data["ledger"]
    assert ledger["rows"] == ledger["admitted"] > 0 and ledger["pending"] == 0
    assert ledger["by_status"].get("cancelled", 0) > 0
    assert data["server"]["restarts"] == 0 and data["server"]["exit_code"] == 0
    assert data["process"]["rss_mb"]["max"] > 0 and data["process"]["fds"]["max"] > 0
    assert "## Soak: PASS" in (tmp_path / "soak.md").read_text()
    assert (tmp_path / "ledger.csv").read_text().count("\n") == ledger["rows"] + 1


def _row(request_id: str, key_id: str, status: str = "finished") -> dict[str, str]:
    return {"request_id": request_id, "key": key_id, "status": status,
            "prompt_tokens": "5", "completion_tokens": "8"}  # fmt: skip


def test_checks_fail_on_a_leak_a_lost_row_and_a_5xx(tmp_path: Path) -> None:
    """The verdict logic alone, on made-up figures (no server): each fault fails its check."""
    keys = Keys(Key("tm-a", "key_a"), Key("tm-b", "key_b"))
    usage = {"prompt_tokens": 5, "completion_tokens": 8}
    outcomes = [
        *(Outcome("chat", "stream", 200, COMPLETED, 0.1, f"id{i}", usage) for i in range(3)),
        Outcome("chat", "stream", 500, UNEXPECTED, 0.1),
        Outcome("limited", "chat", 200, COMPLETED, 0.1, "idL", usage),
        Outcome("limited", "chat", 429, REFUSED, 0.0, retry_after="1"),
    ]
    rows = [_row("id0", "key_a"), _row("id1", "key_a"), _row("idL", "key_b")]  # id2's is lost
    # 10 MB a second: a leak
    samples = [Sample(t, (900 + 10 * t) * 1024, 20, 200, True, t) for t in range(20)]
    idle = Sample(21, 1100 * 1024, 14, 200, True, 20)
    served = Served(SimpleNamespace(pid=1), "http://127.0.0.1:1")  # type: ignore[arg-type]
    served.exit_code, served.stop_seconds = 0, 0.1
    soak = SoakRun(outcomes, samples, idle, 20.0, 1.0)
    meta = {"command": "tokenmill bench --soak", "server": "serve", "time": "now"}
    data = report.build(soak, rows, served, keys, 20, 6, tmp_path / "server.log", meta)

    failed = {c["name"] for c in data["checks"] if not c["ok"]}
    assert failed == {
        "no 5xx", "every request answered as expected", "RSS flat after warm-up",
        "ledger rows == admitted",
    }  # fmt: skip
    assert data["ledger"]["ids_without_row"] == ["id2"]
    assert data["verdict"] == "FAIL" and "## Soak: FAIL" in report.markdown(data)


def test_rss_growth_that_is_the_host_cache_filling_is_not_a_leak() -> None:
    """The same 10 MB a second, all of it prompt KV saved to the host tier (which stops at
    --cache-ram): the rest of the process is flat."""
    samples = [
        Sample(t, (900 + 10 * t) * 1024, 20, 200, True, t, host_cache_kb=10 * t * 1024)
        for t in range(20)
    ]
    idle = Sample(21, 1100 * 1024, 14, 200, True, 20)
    proc = figures.process(samples, idle, warmup=2.0)
    assert proc["rss_mb"]["growth_after_warmup"] == 0.0
    assert proc["rss_mb"]["host_cache_last"] == 190.0
