"""``tokenmill bench --soak``, briefly: it starts its own server, runs every kind of request,
and its checks all pass (the 30-minute run is documented in docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


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
